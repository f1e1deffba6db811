"""`bench/crl.py` at its tiny size: the benchmark cannot rot (issue 15 §6), and its output stays usable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_bench_crl_tiny_run_prints_sane_ratios() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.crl", "--tiny"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1
    row = rows[0]
    assert row["bench"] == "crl" and row["key"] == "RSA-2048" and row["entries"] == 2000
    # the same CRL on both sides: same issuer name, entries and extensions, an RSA-2048 signature each
    assert row["annuaire_bytes"] == row["openssl_bytes"] > 2000 * 37
    for key in ("annuaire_cold_s", "annuaire_warm_s", "openssl_s", "annuaire_peak_rss_mb", "openssl_peak_rss_mb"):
        assert 0 < row[key] < 120, key
    assert len(row["service_build_s"]) == 1 and 0 < row["service_build_median_s"] < 60
    assert row["speedup_cold"] == pytest.approx(row["openssl_s"] / row["annuaire_cold_s"], rel=0.02, abs=0.01)
    rss_ratio = row["annuaire_peak_rss_mb"] / row["openssl_peak_rss_mb"]
    assert row["rss_ratio"] == pytest.approx(rss_ratio, rel=0.02, abs=0.01)
    assert "| RSA-2048 | 2,000 |" in done.stdout  # the markdown table
