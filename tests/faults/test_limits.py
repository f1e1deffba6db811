"""Limits of the listeners, against the served demo: a cap on open connections (503 past it), slow
clients (headers or bodies trickled, or never finished) cut off by a whole-request deadline, over-long
headers and bodies refused, descriptors shared out under RLIMIT_NOFILE; the service keeps answering."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import run_cli
from tests.served import http, serve
from tests.test_handover import _check_signed, _holder
from tests.test_ocsp_direct import _Reader, _requests, _wire_post
from tests.test_workers import _workers


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
    # one serving process: the cap is per process (with [http] workers each one has its share)
    settings = "[http]\nworkers = 1\nmax_connections = 20\nidle_timeout = 2\n"
    demo.write_text(demo.read_text().replace("[http]\n", settings, 1))
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


def _metric(base: str, name: str) -> float:
    lines = [line for line in http(base + "/metrics")[2].decode().splitlines() if line.startswith(name)]
    assert lines, name
    return float(lines[0].split()[-1])


class _Drip:
    """Clients that keep sending one byte every ``period`` on each socket; records when each is closed."""

    def __init__(self, sockets: list[socket.socket], period: float = 0.25) -> None:
        self.sockets, self.period = sockets, period
        self.closed_at: dict[int, float] = {}
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set() and len(self.closed_at) < len(self.sockets):
            for n, s in enumerate(self.sockets):
                if n in self.closed_at:
                    continue
                try:
                    s.sendall(b"0")
                    s.settimeout(0.001)
                    if s.recv(1) == b"":
                        raise ConnectionResetError
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    self.closed_at[n] = time.monotonic() - self.started
            self.stop.wait(self.period)

    def wait_all_closed(self, timeout: float) -> list[float]:
        self.thread.join(timeout)
        self.stop.set()
        return sorted(self.closed_at.values())


def test_dripping_requests_and_admin_floods_cannot_take_a_listener(demo: Path) -> None:
    """Bodies (and headers) dripped a byte at a time hold a connection no longer than
    [http] request_timeout; the admin listener has its own cap and deadlines, and a flood there leaves the
    public listener answering."""
    text = demo.read_text().replace("[http]\n", "[http]\nworkers = 1\nmax_connections = 20\nrequest_timeout = 2\n", 1)
    text = text.replace('token_file = "secrets/admin-token"\n',
                        'token_file = "secrets/admin-token"\nmax_connections = 8\nrequest_timeout = 2\n'
                        'idle_timeout = 2\n', 1)
    demo.write_text(text)
    with serve(demo) as served:
        base, admin = served.base, served.admin
        # 20 POST /ocsp announcing 9000 bytes, then one byte every 0.25 s: the whole listener, held by drips
        drippers = []
        for _ in range(20):
            s = _connect(base)
            s.sendall(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
                      b"Content-Length: 9000\r\n\r\n")
            drippers.append(s)
        headers = _connect(base)  # and one dripping its headers (a byte now and then, never finished)
        headers.sendall(b"GET /healthz HTTP/1.1\r\n")
        drip = _Drip(drippers)
        header_drip = _Drip([headers])
        time.sleep(0.5)
        assert http(base + "/healthz")[0] == 503  # full, as long as the deadline has not come
        closed = drip.wait_all_closed(6)
        assert len(closed) == 20 and closed[-1] < 4.5, closed  # 2 s deadline, whatever they keep sending
        assert header_drip.wait_all_closed(6) and header_drip.closed_at[0] < 4.5
        for path in ("/healthz", "/crl/ac-personnes.crl"):
            assert http(base + path)[0] == 200, path
        assert _metric(base, 'annuaire_http_request_timeouts_total{listener="public"}') >= 20

        # the admin listener: 40 connections with unfinished headers; 8 get in, the rest are turned away
        token = (demo.parent / "secrets" / "admin-token").read_text().strip()
        slow = []
        for _ in range(40):
            s = _connect(admin)
            s.sendall(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        time.sleep(0.3)
        assert http(base + "/healthz")[0] == 200  # the public side does not notice
        assert _metric(base, "annuaire_admin_connections_refused_total") >= 32
        assert _metric(base, "annuaire_admin_connections_open") <= 8
        started = time.monotonic()
        for s in slow:
            assert b"<still open>" not in _read_all(s, 5)
        assert time.monotonic() - started < 5  # cut off by the admin deadlines
        status, _, _ = http(admin + "/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"})
        assert status == 200
        # an admin body dripped: cut off after request_timeout too, and the call is in the audit trail (408)
        s = _connect(admin)
        s.sendall(f"POST /api/v1/revocations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{".encode())
        assert _Drip([s]).wait_all_closed(6)
    audit = run_cli("audit", "export", "-c", str(demo), check=True).stdout
    assert '\\"status\\":408' in audit, audit[-2000:]


def test_descriptors_are_shared_out_under_rlimit_nofile(demo: Path) -> None:
    """With 512 descriptors the public cap is lowered to fit (reserve 256; each listener's lingering refusals
    32 and accept burst 32; admin cap 64: 64 public connections), a
    flood of the admin port larger than the whole limit leaves the public listener accepting; a limit that
    cannot hold the reserve and the admin cap is refused at start."""
    demo.write_text(demo.read_text().replace("[http]\n", "[http]\nworkers = 1\n", 1))  # the budget of one process
    with serve(demo, nofile=512) as served:
        assert "public connections capped at 64" in "".join(c.decode() for c in served._chunks)
        flood = []
        try:
            for _ in range(700):
                s = _connect(served.admin)
                s.sendall(b"GET / HTTP/1.1\r\n")
                flood.append(s)
        except OSError:
            pass  # the kernel's backlog may fill: the point is what the service still does
        assert len(flood) > 512 - 256
        for _ in range(5):
            assert http(served.base + "/healthz")[0] == 200
        for s in flood:
            s.close()
    assert "accept" not in served.output.lower(), served.output[-3000:]
    result = subprocess.run([sys.executable, "-m", "directory.cli", "serve", "-c", str(demo)], capture_output=True,
                            text=True, timeout=60, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                                                        (300, 300)))
    assert result.returncode == 2 and "file descriptor limit (300" in result.stderr, result.stderr


def test_the_main_process_counts_what_its_serving_processes_hold_open(demo: Path) -> None:
    """With ``[http] workers`` the main process also holds its serving processes' connections to its application
    (app.sock: up to 256 each, its internal listener's cap), their refusals and accept burst, and live.sock,
    handover.sock and pipes. Its budget counted none of them: with 2 serving processes and max_connections = 48
    it asked 256 + 128 (admin) + 48 + 64 = 496 descriptors and kept that soft limit; the internal listener's
    connections then took every one, and the main process could no longer receive a connection handed over (nor
    accept, nor open a file). The limit must be raised to what it can hold (the hard limit allows it here)."""
    demo.write_text(demo.read_text().replace("[http]\n", "[http]\nworkers = 2\nmax_connections = 48\n", 1))
    with serve(demo, nofile=(496, 4096)) as served:
        base, port, main = served.base, int(served.base.rsplit(":", 1)[1]), served.proc.pid
        workers = _workers(main)
        cmdline = Path(f"/proc/{workers[0]}/cmdline").read_bytes().split(b"\0")
        app_sock = str(Path(cmdline[cmdline.index(b"--sockets") + 1].decode()) / "app.sock")
        internal = []
        try:
            for _ in range(2 * 256):  # what the serving processes may hold open there
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                internal.append(s)
                s.connect(app_sock)
            time.sleep(0.5)
            nonced = _requests(demo, nonce=True)[0]
            with _connect(base) as sock:  # a connection handed over: the main process takes its descriptor
                sock.sendall(_wire_post(nonced))
                _check_signed(_Reader(sock).response()[2], nonced)
                assert _holder([main, *workers], sock, port) == main
        finally:
            for s in internal:
                s.close()
    for trouble in ("Too many open files", "out of system resource", "truncated"):
        assert trouble not in served.output, served.output[-3000:]


def test_a_limit_that_cannot_hold_the_serving_processes_connections_is_refused_at_start(demo: Path) -> None:
    """README's promise with ``[http] workers``: when the limit cannot hold the reserve, the serving processes'
    connections to the main process (``limits.internal``: 2 × 256 + 64 + 2 × 4 here) and the admin cap, ``serve``
    refuses to start (exit 2) and says so, naming ``[http] workers`` among what to lower."""
    demo.write_text(demo.read_text().replace("[http]\n", "[http]\nworkers = 2\n", 1))
    result = subprocess.run([sys.executable, "-m", "directory.cli", "serve", "-c", str(demo)], capture_output=True,
                            text=True, timeout=60, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                                                        (700, 700)))
    assert result.returncode == 2, result.stderr
    assert "the serving processes' connections (584)" in result.stderr, result.stderr
    assert "or [http] workers" in result.stderr, result.stderr
