"""Benchmarks don't rot: every bench/ script runs at its tiny size here (``--tiny --json``, a subprocess, a
work folder of this module's own), and its figures must be sane. A new script without a tiny run in tests/,
or missing from `make bench`, fails the guards below.

The tiny runs share two small demos (built once, in the first script that needs them) under BENCH_OUT.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

BENCH = ROOT / "bench"
# Scripts whose tiny runs come from other lanes of issue 15 (i15-crl: bench.crl; i15-answer: bench.ocsp).
# The coordinator removes them from this set at merge; the guard fails once one has a run of its own.
EXCEPTIONS: set[str] = set()
RUN = re.compile(r"""["']bench\.(\w+)["']""")  # a module name in quotes: what `-m` gets in a test's argv


def scripts() -> set[str]:
    return {p.stem for p in BENCH.glob("*.py")} - {"__init__", "common"}


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-out")


def tiny(module: str, out: Path, *args: str, timeout: float = 180) -> dict:
    """``python -m MODULE --tiny --json``: rc 0 and one JSON line on stdout, returned."""
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}  # each demo names its own token
    result = subprocess.run([sys.executable, "-m", module, "--tiny", "--json", *args], capture_output=True, text=True,
                            cwd=ROOT, timeout=timeout, env={**env, "BENCH_OUT": str(out)})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout[-3000:]
    return json.loads(lines[0])


def test_hsm(bench_out: Path) -> None:
    rows = tiny("bench.hsm", bench_out)["rows"]
    assert sorted((r["key"], r["threads"]) for r in rows) == [("ec", 1), ("ec", 2), ("rsa", 1), ("rsa", 2)]
    assert all(r[k] > 0 for r in rows for k in ("direct_sig_s", "signer_sig_s", "machinery_sig_s")), rows


def test_hsm_tpm2(bench_out: Path) -> None:
    figures = tiny("bench.hsm_tpm2", bench_out)
    rows = figures["rows"]
    assert sorted((r["key"], r["max_concurrent"]) for r in rows) == [("p-256", 2), ("p-256", 8), ("rsa", 2), ("rsa", 8)]
    for row in rows:
        assert row["signed"] == row["asked"] == figures["threads"] * figures["per_thread"] > 0, row
        assert row["hsm_errors"] == 0 and row["module_error_lines"] == 0 and row["sig_s"] > 0, row


def test_importer(bench_out: Path) -> None:
    figures = tiny("bench.importer", bench_out)
    assert figures["imported"] == figures["certificates"] == 200 and figures["refused"] == 0, figures
    assert figures["rows_per_s"] > 0 and figures["peak_rss_mb"] > 0, figures


def test_ldap(bench_out: Path) -> None:
    figures = tiny("bench.ldap", bench_out)
    assert figures["certificates"] == 300 and figures["entries"] == figures["dumped"] > 0, figures
    assert figures["projecting_added"] == figures["entries"] and figures["verify_drift"] == 0, figures
    assert figures["ldapadd_entries_s"] > 0 and figures["first_sync_entries_s"] > 0, figures
    assert figures["revocations"] == 5 and 0 < figures["revocation_p50_ms"] <= figures["revocation_max_ms"], figures


def test_fuzz(bench_out: Path) -> None:
    figures = tiny("bench.fuzz", bench_out)
    counts = figures["in_process"]
    assert counts["inputs"] == 2000 and counts["parsed"] + counts["malformed"] == counts["inputs"], counts
    assert figures["crashes"] == figures["http_500"] == figures["tracebacks_in_log"] == 0, figures
    statuses = {k: v for k, v in figures["over_http"].items() if k.isdigit()}
    assert sum(statuses.values()) == figures["http_requests"] == 100, figures


def test_scale(bench_out: Path) -> None:
    figures = tiny("bench.scale", bench_out)
    assert figures["certificates"] > 0 and len(figures["one_node_rps"]) == len(figures["two_nodes_rps"]) == 1
    assert min(figures["one_node_rps"] + figures["two_nodes_rps"]) > 0 and figures["ratio"] > 0, figures


def test_check(bench_out: Path) -> None:
    figures = tiny("bench.check", bench_out)
    assert figures["findings"] == 0 and figures["cycles"] >= 1 and figures["checker_cpu_s"] > 0, figures
    assert all(n > 0 for n in figures["checked"].values()) and figures["crl"]["entries"] == 200, figures


def test_soak(bench_out: Path) -> None:
    figures = tiny("bench.soak", bench_out)
    assert figures["errors"] == 0, figures["error_kinds"]
    kinds = figures["by_kind"]
    assert figures["rps"] > 0 and all(kinds[k]["count"] > 0 for k in ("ocsp", "crl", "revoke")), figures
    assert figures["requests"] == sum(k["count"] for k in kinds.values()) and figures["rss_mb"], figures


def test_ocsp_nonce(bench_out: Path) -> None:
    rows = tiny("bench.ocsp_nonce", bench_out, timeout=300)["rows"]
    assert [r["key"] for r in rows] == ["RSA-2048", "P-256"]
    for r in rows:
        assert r["not_successful"] == 0 and r["verified"] >= 1, r  # answers checked with cryptography
        assert r["raw_sig_per_s"] > 0 and r["nonce_answers_per_s"] > 0 and r["threads"] >= 1, r
        assert 0 < r["ratio"] < 5 and 0 < r["cpu_ratio"] < 5, r


def test_every_bench_script_has_a_tiny_run() -> None:
    """A script of bench/ that no test runs (``"bench.NAME"`` in tests/) fails here: add its tiny run."""
    ran = {name for path in (ROOT / "tests").rglob("*.py") for name in RUN.findall(path.read_text())}
    assert scripts() - ran - EXCEPTIONS == set(), "bench scripts without a tiny run in tests/"
    assert scripts() >= EXCEPTIONS, "an excepted script is gone: remove it from EXCEPTIONS"
    assert EXCEPTIONS & ran == set(), "an excepted script has its tiny run now: remove it from EXCEPTIONS"


def test_make_bench_runs_every_script() -> None:
    target = re.search(r"^bench:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert target is not None
    listed = re.findall(r"-m bench\.(\w+)", target.group(1))
    assert set(listed) == scripts()
    assert len(listed) == len(set(listed)), listed
