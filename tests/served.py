"""Running `annuaire serve` for a test: pick a free port, wait until ready, stop cleanly, check the log."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT, free_port


def http(url: str, method: str = "GET", body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@dataclass
class Served:
    base: str
    config: Path
    proc: subprocess.Popen[bytes]
    ldap_url: str = ""
    output: str = ""
    admin: str = ""
    _chunks: list[bytes] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def drain(self) -> None:
        """Read the service's output as it comes (a full pipe would block the service's logging)."""

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self._chunks.append(line)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def stop(self) -> str:
        """SIGTERM, wait, and return what the service logged."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        if not self.output:
            self.output = b"".join(self._chunks).decode(errors="replace")
        return self.output


def _limit_descriptors(n: int | tuple[int, int]) -> Callable[[], None]:
    soft, hard = n if isinstance(n, tuple) else (n, n)

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


@contextmanager
def serve(config: Path, ready: bool = True, env: dict[str, str] | None = None,
          nofile: int | tuple[int, int] | None = None) -> Iterator[Served]:
    """Start the service on free ports (HTTP, and the managed slapd's); wait for /readyz (or /healthz).
    ``env``: variables added to the service's environment; ``nofile``: its RLIMIT_NOFILE (soft and hard, or
    both as a pair)."""
    port, ldap_port, admin_port = free_port(), free_port(), free_port()
    text = re.sub(r'listen = "127\.0\.0\.1:\d+"', f'listen = "127.0.0.1:{port}"', config.read_text(), count=1)
    text = re.sub(r'(\[admin\]\nlisten = )"127\.0\.0\.1:\d+"', rf'\1"127.0.0.1:{admin_port}"', text)
    config.write_text(re.sub(r'"ldap://127\.0\.0\.1:\d+"', f'"ldap://127.0.0.1:{ldap_port}"', text))
    proc = subprocess.Popen([sys.executable, "-m", "directory.cli", "serve", "--config", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            preexec_fn=_limit_descriptors(nofile) if nofile else None)
    served = Served(f"http://127.0.0.1:{port}", config, proc, f"ldap://127.0.0.1:{ldap_port}",
                    admin=f"http://127.0.0.1:{admin_port}")
    served.drain()
    deadline = time.monotonic() + 60
    probe = "/readyz" if ready else "/healthz"
    while True:
        try:
            if http(served.base + probe)[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            code = proc.poll()
            proc.kill()
            raise AssertionError(f"service did not become ready (exit code {code}):\n{served.stop()[-5000:]}")
        time.sleep(0.2)
    try:
        yield served
    finally:
        output = served.stop()
        print(output[-5000:])  # shown by pytest when the test fails
        assert "Traceback" not in output, output[-3000:]
