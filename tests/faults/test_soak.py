"""The 30-second soak (`bench/soak.py` runs it for 10 minutes): mixed load from a second process against
the served demo. No error at all, answers fast enough, memory flat, and the service still truthful after."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, run_cli
from tests.served import http, serve


def test_thirty_second_soak(demo: Path) -> None:
    with serve(demo) as served:
        result = subprocess.run([sys.executable, "-m", "bench.soak", "--base", served.base, "--admin", served.admin,
                                 "--token-file", str(demo.parent / "secrets" / "admin-token"), "--demo",
                                 str(demo.parent), "--pid", str(served.proc.pid), "--duration", "30", "--json"],
                                capture_output=True, text=True, cwd=ROOT, timeout=180)
        assert result.returncode in (0, 1) and result.stdout, result.stderr[-3000:]
        summary = json.loads(result.stdout)
        print(json.dumps(summary, indent=1))
        assert summary["errors"] == 0, summary["error_kinds"]
        assert summary["rps"] > 100, summary
        kinds = summary["by_kind"]
        assert kinds["ocsp"]["count"] > kinds["crl"]["count"] > kinds["revoke"]["count"] > 0
        assert kinds["ocsp"]["p99_ms"] < 500, kinds
        assert summary["rss_growth_mb_after_warmup"] < 40, summary["rss_mb"]
        assert http(served.base + "/readyz")[0] == 200
    # after the storm: the audit chain holds and the directory matches the registry
    assert run_cli("audit", "verify", "-c", str(demo)).returncode == 0
