"""CI (.ci/run) checks what `make lint` checks: ruff, then the dependency audit, which is reported as
skipped, with its reason, when PyPI's advisory data cannot be reached (never a silent pass)."""

from __future__ import annotations

import subprocess

from tests.conftest import ROOT


def test_ci_runs_ruff_and_the_audit_before_the_tests() -> None:
    steps = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line and not line.startswith(("#", "set ", "cd "))]
    assert steps == ["make --no-print-directory ruff", "bash .ci/pip-audit", "exec make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert "lint: ruff audit" in makefile and "$(BIN)/ruff check ." in makefile
    assert "$(BIN)/pip-audit --strict" in makefile


def test_audit_unreachable_is_reported_as_skipped() -> None:
    result = subprocess.run(["bash", str(ROOT / ".ci" / "pip-audit")], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "ADVISORY_PROBE_URL": "http://127.0.0.1:9/closed"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pip-audit: SKIPPED (advisory service unreachable: http://127.0.0.1:9/closed: ")
    assert "Connection refused" in result.stdout
