"""`annuaire serve`: /healthz, /readyz (with reasons), clean shutdown on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture()
def served(demo: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    port = free_port()
    demo.write_text(demo.read_text().replace('listen = "127.0.0.1:18080"', f'listen = "127.0.0.1:{port}"'))
    proc = subprocess.Popen([sys.executable, "-m", "directory.cli", "serve", "--config", str(demo)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            _get(base + "/healthz")
            break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(proc.stdout.read().decode() if proc.stdout else "no output") from None
            time.sleep(0.1)
    yield base, demo.parent, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_health_ready_and_sigterm(served: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    base, _, proc = served
    assert _get(base + "/healthz") == (200, {"status": "alive"})
    assert _get(base + "/readyz") == (200, {"status": "ready"})
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert "shutting down" in output and "Traceback" not in output


def test_readyz_reports_a_missing_token_and_recovers(served: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    base, demo_dir, proc = served
    tokens = demo_dir / "hsm" / "tokens"
    tokens.rename(demo_dir / "hsm" / "tokens.away")
    tokens.mkdir()
    try:
        # sessions already open may keep working until the module is re-initialised; wait for the report
        deadline = time.monotonic() + 20
        status, body = _get(base + "/readyz")
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.5)
            status, body = _get(base + "/readyz")
        assert status == 503, body
        assert "hsm" in body["problems"]
    finally:
        tokens.rmdir()
        (demo_dir / "hsm" / "tokens.away").rename(tokens)
    deadline = time.monotonic() + 20
    while _get(base + "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "did not recover"
        time.sleep(0.5)
    pin = (demo_dir / "hsm" / "pin").read_text().strip()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert pin not in output
