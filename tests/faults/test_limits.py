"""Limits of the public listener, against the served demo: a cap on open connections (503 past it),
slow clients (headers trickled, or never finished) cut off, over-long headers and bodies refused;
the service keeps answering throughout."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.served import http, serve


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        return b"".join(chunks) + b"<still open>"
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_connection_cap_slow_clients_and_oversized_requests(demo: Path) -> None:
    demo.write_text(demo.read_text().replace("[http]\n", "[http]\nmax_connections = 20\nidle_timeout = 2\n", 1))
    with serve(demo) as served:
        base = served.base
        # 20 slow clients hold every slot (request line sent, headers never finished)
        slow = []
        for _ in range(20):
            s = _connect(base)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        time.sleep(0.2)
        extra = _connect(base)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_all(extra, 5)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer, answer[:200]
        # the slow ones are cut off by the idle timeout (2 s here), freeing the slots
        started = time.monotonic()
        for s in slow:
            assert b"<still open>" not in _read_all(s, 6)
        assert time.monotonic() - started < 6
        assert http(base + "/healthz")[0] == 200

        # a client trickling one header line a second is cut off too
        trickle = _connect(base)
        trickle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed_after = None
        for n in range(10):
            time.sleep(0.5)
            try:
                trickle.sendall(f"X-Slow-{n}: y\r\n".encode())
            except OSError:
                closed_after = time.monotonic() - started
                break
            trickle.settimeout(0.01)
            try:
                if trickle.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except (TimeoutError, BlockingIOError):
                pass
            except OSError:
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None and closed_after < 4, closed_after

        # over-long header field and request line: refused, nothing served
        status, _, _ = http(base + "/healthz", headers={"X-Big": "a" * 20000})
        assert status in (400, 431)
        status, _, _ = http(base + "/ocsp/" + "A" * 20000)
        assert status in (400, 414, 431)
        # an OCSP body over 10 KiB: 413
        status, _, _ = http(base + "/ocsp", method="POST", body=b"0" * 11000,
                            headers={"Content-Type": "application/ocsp-request"})
        assert status == 413
        # the metrics count what was turned away; the service still answers
        metrics = http(base + "/metrics")[2].decode()
        refused = [line for line in metrics.splitlines() if line.startswith("annuaire_http_connections_refused_total")]
        assert refused and float(refused[0].split()[-1]) >= 1
        assert http(base + "/readyz")[0] == 200
