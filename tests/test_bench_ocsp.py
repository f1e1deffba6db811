"""bench/ocsp.py and bench/ocsp_answer.py at their tiny size (benchmarks don't rot): our pre-signed answer path,
a bare aiohttp handler and ``cfssl ocspserve`` answering the same bytes, under asyncio's loop and uvloop."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _tiny(module: str, *args: str) -> dict:
    for tool in ("wrk", "cfssl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; `make test` installs it (TEST_DEB_PACKAGES)")
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}  # the bench demo names its own token
    result = subprocess.run([sys.executable, "-m", module, "--tiny", "--json", *args], capture_output=True, text=True,
                            cwd=ROOT, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout[-3000:]
    return json.loads(lines[0])


def _sane(figures: dict, loops: list[str]) -> None:
    assert figures["loops"] == loops and figures["answers"] > 0 and figures["errors"] == 0, figures
    for loop in loops:
        for method in ("POST", "GET"):
            assert figures["rps"][f"ours {loop} {method}"] > 0, figures
            assert figures["rps"][f"bare aiohttp {loop} {method}"] > 0, figures
            assert figures["ratios"][f"ours/bare {loop} {method}"] > 0, figures
        # cfssl answered our own successful response before it was timed (bench.ocsp_answer checks it)
        assert figures["rps"][f"cfssl ({loop} side) POST"] > 0 and figures["ratios"][f"ours/cfssl {loop} POST"] > 0


def test_bench_ocsp_tiny() -> None:
    _sane(_tiny("bench.ocsp"), ["asyncio", "uvloop"])


def test_bench_ocsp_answer_tiny_one_loop_pinned() -> None:
    """``--pin`` (wrk on a core of its own, every server on the other) runs too: bench.ocsp covers the unpinned."""
    figures = _tiny("bench.ocsp_answer", "--loops", "asyncio", "--pin")
    assert figures["pinned"] is True, figures
    _sane(figures, ["asyncio"])
