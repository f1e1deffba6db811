"""bench/ocsp_workers.py at its tiny size: it runs, and what it prints is sane (benchmarks cannot rot)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_ocsp_workers_bench_tiny() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.ocsp_workers", "--tiny"], cwd=ROOT, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["bench"] == "ocsp_workers" and last["tiny"] is True
    assert last["ratio_post"] > 0 and last["ratio_get"] > 0
    for run in ("workers=1", "workers=2"):
        assert last["rates"][run]["POST"] > 0 and last["rates"][run]["GET"] > 0
    for run in ("workers=1", "workers=2", "workers=4"):
        memory = last["memory_mb"][run]
        assert 0 < memory["pss"] <= memory["rss"] and memory["bound"] > 0
    assert last["memory_mb"]["workers=2"]["store"] > 0  # the shared store exists with serving processes
