"""One bound on live OCSP work per process (``ocsp.live.Backlog``), against floods of nonce requests: the real
service and SoftHSM2, the main process held back with SIGSTOP so that what the clients sent is read in one burst
(faster than the HSM signs) and, frozen again, waits past its deadline.

Whatever asks (the main process's own connections; the serving processes' over livewire), at most 1,024
requests wait for the signer; past that a request is answered tryLater at once, every request is answered (a
signature or tryLater, in its connection's order), nothing is signed for a request past its deadline, each
give-up is counted for its source, and the service answers as before afterwards."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ocsp.live import MAX_WAITING
from tests.served import serve
from tests.test_handover import _check_signed, _metric
from tests.test_handover_deadlines import _http10_body, _post_http10
from tests.test_ocsp_direct import _connect, _Reader, _requests, _until_held, _wire_post

TRY_LATER = bytes.fromhex("3003 0a01 03")  # OCSPResponse ::= SEQUENCE { responseStatus tryLater(3) }
SIGNATURES = "annuaire_hsm_signatures_total"
WAITING = "annuaire_ocsp_live_backlog"
PIPELINED = 16  # ocsp.direct.MAX_PENDING: a connection's answers in flight


def _full(source: str) -> str:
    return f'annuaire_ocsp_live_backlog_full_total{{source="{source}"}}'


def _expired(source: str) -> str:
    return f'annuaire_ocsp_live_expired_total{{source="{source}"}}'


def _nonces(demo: Path) -> Callable[[], bytes]:
    """A maker of nonce requests (a nonce of its own each: never held, always signed) for a good certificate."""
    d = demo.parent
    der = _requests(demo)[0]
    asked = ocsp.load_der_ocsp_request(der)
    issuer = x509.load_pem_x509_certificate((d / "ca" / "ac-personnes.pem").read_bytes())
    for path in (d / "certs").glob("*.pem"):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        if cert.serial_number == asked.serial_number and cert.issuer == issuer.subject:
            break
    else:
        raise AssertionError("no certificate for the request")

    def make() -> bytes:
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
        builder = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
        return builder.build().public_bytes(serialization.Encoding.DER)

    return make


class _Sampler(threading.Thread):
    """The waiting gauge read off /metrics every 20 ms while the flood lasts (when the process answers)."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.seen, self.done = base, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with urllib.request.urlopen(self.base + "/metrics", timeout=2) as response:
                    text = response.read().decode()
            except OSError:
                continue
            found = re.search(rf"^{WAITING} (\S+)$", text, re.M)
            if found:
                self.seen.append(float(found.group(1)))
            time.sleep(0.02)


class _Flood:
    """Connections each answered ``count`` responses, read as they come (Content-Length framing): for each, the
    order of their X-Request-IDs and whether each is tryLater, and when the first tryLater came."""

    def __init__(self, socks: list[socket.socket], count: int) -> None:
        self.socks, self.count = socks, count
        self.ids: dict[int, list[str]] = {i: [] for i in range(len(socks))}
        self.late: dict[int, list[bool]] = {i: [] for i in range(len(socks))}
        self.first_try_later: float | None = None

    def read(self, on_try_later: Callable[[], None] = lambda: None, within: float = 60.0) -> None:
        sel = selectors.DefaultSelector()
        buffers = {}
        for i, sock in enumerate(self.socks):
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, i)
            buffers[i] = b""
        left, deadline = len(self.socks), time.monotonic() + within
        while left:
            assert time.monotonic() < deadline, f"{left} connections still waiting for answers"
            for key, _ in sel.select(1.0):
                i = key.data
                chunk = self.socks[i].recv(1 << 20)
                assert chunk, f"connection {i} closed after {len(self.ids[i])} answers"
                buffers[i] += chunk
                while b"\r\n\r\n" in buffers[i]:
                    head, rest = buffers[i].split(b"\r\n\r\n", 1)
                    size = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                    if len(rest) < size:
                        break
                    body, buffers[i] = rest[:size], rest[size:]
                    assert head.startswith(b"HTTP/1.1 200 "), head
                    self.ids[i].append(re.search(rb"(?i)\r\nx-request-id: *(\S+)", head).group(1).decode())  # type: ignore[union-attr]
                    late = body == TRY_LATER
                    if not late:
                        assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
                    self.late[i].append(late)
                    if late and self.first_try_later is None:
                        self.first_try_later = time.monotonic()
                        on_try_later()
                    if len(self.ids[i]) == self.count:
                        sel.unregister(self.socks[i])
                        left -= 1
        sel.close()

    @property
    def answered(self) -> int:
        return sum(len(v) for v in self.late.values())

    @property
    def try_later(self) -> int:
        return sum(sum(v) for v in self.late.values())

    def in_order(self) -> bool:
        return all(ids == [f"c{i}-{n}" for n in range(self.count)] for i, ids in self.ids.items())


def _send_pipelined(socks: list[socket.socket], make: Callable[[], bytes]) -> None:
    for i, sock in enumerate(socks):
        sock.sendall(b"".join(_wire_post(make(), b"X-Request-ID: c%d-%d" % (i, n)) for n in range(PIPELINED)))


def _quiet(base: str) -> float:
    """The HSM's signature count once it stops moving (pre-signing and start-up CRLs done): from then on every
    signature is a live answer's."""
    last, since, deadline = _metric(base, SIGNATURES), time.monotonic(), time.monotonic() + 60
    while time.monotonic() - since < 2:
        assert time.monotonic() < deadline, "the HSM never stopped signing"
        time.sleep(0.25)
        now = _metric(base, SIGNATURES)
        if now != last:
            last, since = now, time.monotonic()
    return last


def _configure(demo: Path, workers: int, timeout: int) -> None:
    """The publication checker off: it asks the service for nonce answers every interval, live requests and
    signatures of its own that the counts here would take for the flood's."""
    text = demo.read_text().replace("[http]\n", f"[http]\nworkers = {workers}\nrequest_timeout = {timeout}\n", 1)
    assert "[check]" not in text
    demo.write_text(text + "\n[check]\nenabled = false\n")


def test_a_nonce_flood_on_the_main_process_is_bounded_answered_and_not_signed_past_its_deadline(demo: Path) -> None:
    """``workers = 1``: 2,560 nonce requests on 160 connections read at once. At most 1,024 wait for the signer
    (the gauge, sampled, never above), the rest tryLater at once (well before any deadline); frozen past
    ``request_timeout`` with the bound reached, what still waited is given up: tryLater, and no signing thread
    takes it up (a few signatures were under way or not yet handed over). Every request answered, in its
    connection's order; every tryLater counted (``source="local"``); the service answers normally after."""
    timeout, conns = 3, 160
    _configure(demo, 1, timeout)
    with serve(demo) as served:
        base, main = served.base, served.proc.pid
        for der in _requests(demo):
            _until_held(base, der)  # pre-signing done: every signature from now on is a live answer's
        make = _nonces(demo)
        warm = _connect(base)
        nonced = make()
        warm.sendall(_wire_post(nonced))
        _check_signed(_Reader(warm).response()[2], nonced)
        warm.close()
        signatures = _quiet(base)
        socks = [_connect(base) for _ in range(conns)]
        time.sleep(0.5)  # accepted
        sampler = _Sampler(base)
        sampler.start()
        flood = _Flood(socks, PIPELINED)

        def freeze() -> None:  # the bound reached: what waits now is held past its deadline
            sampler.seen.append(_metric(base, WAITING))
            os.kill(main, signal.SIGSTOP)
            time.sleep(timeout + 1)
            os.kill(main, signal.SIGCONT)

        try:
            os.kill(main, signal.SIGSTOP)
            try:
                _send_pipelined(socks, make)
            finally:
                resumed = time.monotonic()
                os.kill(main, signal.SIGCONT)
            flood.read(freeze)
        finally:
            sampler.done.set()
            for sock in socks:
                sock.close()
        sampler.join()
        total = conns * PIPELINED
        assert flood.answered == total and flood.in_order()
        assert flood.first_try_later is not None and flood.first_try_later - resumed < timeout / 2, \
            "the excess was not answered at once"
        full, expired = _metric(base, _full("local")), _metric(base, _expired("local"))
        assert full > 0 and expired > 0, (full, expired)
        assert flood.try_later == full + expired
        assert _metric(base, _full("workers")) == 0 and _metric(base, _expired("workers")) == 0
        # every signature went to a client, but those a thread had begun before their deadline and those done
        # before it that the event loop had yet to hand over when it gave them up (uvloop runs its timers before
        # the hand-over): a few, where a signer taking up what waited past its deadline would have made ~900
        wasted = _metric(base, SIGNATURES) - signatures - (total - flood.try_later)
        assert 0 <= wasted < expired / 20, f"{wasted:.0f} signatures for {expired:.0f} requests given up"
        assert 0 < max(sampler.seen) <= MAX_WAITING, sampler.seen
        assert _metric(base, WAITING) == 0
        after = _connect(base)
        nonced = make()
        after.sendall(_wire_post(nonced))
        _check_signed(_Reader(after).response()[2], nonced)
        after.close()


def _http10_late(sock: socket.socket) -> bool:
    """Whether the livewire request's answer is tryLater (else a signed successful one)."""
    body = _http10_body(sock, 30)
    if body == TRY_LATER:
        return True
    assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    return False


def test_the_main_process_own_requests_and_the_serving_processes_share_one_bound(demo: Path) -> None:
    """``workers = 2``: 64 connections handed over to the main process (its own: 1,024 requests pipelined) and
    600 requests the serving processes send over livewire, all read at once. Each source alone is within 1,024;
    together they are not: the one bound turns the excess away (tryLater at once, counted for its source), the
    gauge never above it, and every request of either source is answered."""
    timeout, held_conns, remote = 5, 64, 600
    _configure(demo, 2, timeout)
    with serve(demo) as served:
        base, main = served.base, served.proc.pid
        for der in _requests(demo):
            _until_held(base, der)
        make = _nonces(demo)
        held = []
        for _ in range(held_conns):  # a nonce on each: the connection is handed over to the main process
            sock = _connect(base)
            nonced = make()
            sock.sendall(_wire_post(nonced))
            _check_signed(_Reader(sock).response()[2], nonced)
            held.append(sock)
        assert _metric(base, "annuaire_http_connections_handed_over_total") == held_conns
        assert _http10_late(_post_http10(base, make())) is False  # livewire is up
        sampler = _Sampler(base)
        sampler.start()
        flood = _Flood(held, PIPELINED)
        os.kill(main, signal.SIGSTOP)
        try:
            _send_pipelined(held, make)
            asked = [_post_http10(base, make()) for _ in range(remote)]
            time.sleep(1)  # the serving processes read them and send them on livewire
        finally:
            os.kill(main, signal.SIGCONT)
        try:
            flood.read()
            remote_late = sum(_http10_late(sock) for sock in asked)
        finally:
            sampler.done.set()
            for sock in [*held, *asked]:
                sock.close()
        sampler.join()
        assert flood.answered == held_conns * PIPELINED and flood.in_order()
        full = _metric(base, _full("local")) + _metric(base, _full("workers"))
        expired = _metric(base, _expired("local")) + _metric(base, _expired("workers"))
        assert full > 0, "1,624 requests read at once and none turned away: two bounds, not one"
        assert flood.try_later + remote_late == full + expired
        assert sampler.seen and max(sampler.seen) <= MAX_WAITING, sampler.seen
        assert _metric(base, WAITING) == 0
        assert _http10_late(_post_http10(base, make())) is False
        again = _connect(base)
        nonced = make()
        again.sendall(_wire_post(nonced))
        _check_signed(_Reader(again).response()[2], nonced)
        again.close()
