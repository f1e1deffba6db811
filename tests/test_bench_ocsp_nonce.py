"""``bench/ocsp_nonce.py`` at its tiny size: it runs, every nonce answer was successful, the figures are sane."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_nonce_bench_runs_at_its_tiny_size() -> None:
    run = subprocess.run([sys.executable, "-m", "bench.ocsp_nonce", "--tiny", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    rows = json.loads(run.stdout.strip().splitlines()[-1])
    assert [r["key"] for r in rows] == ["RSA-2048", "P-256"]
    for r in rows:
        assert r["not_successful"] == 0 and r["verified"] == 5, r
        assert r["raw_sig_per_s"] > 0 and r["nonce_answers_per_s"] > 0, r
        assert 0 < r["ratio"] < 5 and 0 < r["cpu_ratio"] < 5 and r["threads"] >= 1, r
        assert r["cpu_ms_per_raw_sig"] > 0 and r["cpu_ms_per_answer_service"] > 0, r
