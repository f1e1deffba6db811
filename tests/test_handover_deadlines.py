"""Deadlines across the processes of ``[http] workers``: a request a serving process gave up waiting for, in the
main process, is answered (a 503, tryLater) or not worked on, never silently lost nor signed for nobody. The real
service and SoftHSM2; the main process held back with SIGSTOP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from cryptography.x509 import ocsp

from directory.service.handover import Adopter, Passer
from directory.service.listener import ConnectionGate
from tests.served import http, serve
from tests.test_handover import _check_signed, _holder, _metric
from tests.test_ocsp_direct import (
    _answers,
    _body,
    _client,
    _connect,
    _gated,
    _Reader,
    _requests,
    _Signing,
    _until,
    _until_held,
    _wire,
    _wire_post,
)
from tests.test_workers import _workers

UNANSWERED = "annuaire_http_connections_handover_unanswered_total"
LATE = "annuaire_http_connections_handover_late_total"
EXPIRED = 'annuaire_ocsp_live_expired_total{source="workers"}'
BACKLOG = "annuaire_ocsp_live_backlog"
BACKLOG_FULL = 'annuaire_ocsp_live_backlog_full_total{source="workers"}'
SIGNATURES = "annuaire_hsm_signatures_total"


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    """The main process frozen (busy, swapped out, stuck on a slow call) while the block runs."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_an_offer_read_after_its_deadline_is_answered_503_not_lost(demo: Path) -> None:
    """The main process's share of connections full, then more than ``request_timeout`` behind: a serving process
    offers a nonce connection, hears nothing, closes its descriptor (it must not take it back). The main process
    then reads the offer. Refusing it as it refuses a timely one (closing its descriptor, the serving process
    answering) would close the connection with the request unanswered: the client must get a 503 instead, and
    both sides count it."""
    timeout = 2
    demo.write_text(demo.read_text().replace(
        "[http]\n", f"[http]\nworkers = 2\nmax_connections = 48\nrequest_timeout = {timeout}\n", 1))
    with serve(demo) as served:
        base, port, main = served.base, int(served.base.rsplit(":", 1)[1]), served.proc.pid
        workers = _workers(main)
        kept: list[socket.socket] = []
        try:
            for _ in range(16):  # the main process's share: max(16, 48 / 3)
                sock = _connect(base)
                kept.append(sock)
                nonced = _requests(demo, nonce=True)[0]
                sock.sendall(_wire_post(nonced))
                _check_signed(_Reader(sock).response()[2], nonced)
                assert _holder([main, *workers], sock, port) == main
            late = _connect(base)
            with _stopped(main):
                late.sendall(_wire_post(_requests(demo, nonce=True)[0]))
                time.sleep(timeout + 1.5)  # the serving process gave up its offer
            late.settimeout(10)
            status, fields, _ = _Reader(late).response()
            assert status == b"HTTP/1.1 503 Service Unavailable" and dict(fields)["Retry-After"] == "1"
            assert late.recv(1) == b""
            late.close()
            assert _metric(base, UNANSWERED) == 1 and _metric(base, LATE) == 1
        finally:
            for sock in kept:
                sock.close()


def _post_http10(base: str, der: bytes) -> socket.socket:
    """A nonce request the direct path does not take (HTTP/1.0): aiohttp's in its serving process, which asks the
    main process to sign it over livewire (never handed over)."""
    sock = _connect(base)
    sock.sendall(b"POST /ocsp HTTP/1.0\r\nHost: annuaire\r\nContent-Type: application/ocsp-request\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(der) + der)
    return sock


def _http10_body(sock: socket.socket, timeout: float = 10) -> bytes:
    """The body of ``_post_http10``'s answer (read to the close, HTTP/1.0), which must be a 200."""
    data = b""
    sock.settimeout(timeout)
    while chunk := sock.recv(65536):
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.split(b" ", 2)[1] == b"200", head
    return body


def _status(sock: socket.socket) -> ocsp.OCSPResponseStatus:
    return ocsp.load_der_ocsp_response(_http10_body(sock)).response_status


def test_live_requests_given_up_by_their_serving_process_are_not_signed(demo: Path) -> None:
    """The main process more than ``request_timeout`` behind: its serving processes answer their clients tryLater
    and forget the requests they sent over livewire. When it gets to them, it must not spend the HSM on answers
    nobody waits for (a flood of nonces would otherwise cost a signature each, long after): none signed, each
    counted."""
    timeout, count = 2, 12
    demo.write_text(demo.read_text().replace(
        "[http]\n", f"[http]\nworkers = 2\nrequest_timeout = {timeout}\n", 1))
    with serve(demo) as served:
        base, main = served.base, served.proc.pid
        for der in _requests(demo):
            _until_held(base, der)
        nonced = _requests(demo, nonce=True)[0]
        assert _status(_post_http10(base, nonced)) == ocsp.OCSPResponseStatus.SUCCESSFUL  # livewire is up
        signed = _metric(base, SIGNATURES)
        with _stopped(main):
            socks = [_post_http10(base, _requests(demo, nonce=True)[0]) for _ in range(count)]
            time.sleep(timeout + 1)
        assert [_status(s) for s in socks] == [ocsp.OCSPResponseStatus.TRY_LATER] * count
        for sock in socks:
            sock.close()
        time.sleep(1)  # the main process reads what waited on livewire
        assert _metric(base, SIGNATURES) == signed, "requests nobody waits for were signed"
        assert _metric(base, EXPIRED) == count
        exposed = http(base + "/metrics")[2].decode()  # README's other two: none waiting now, none turned away
        for name in (BACKLOG, BACKLOG_FULL):
            assert re.search(rf"^{re.escape(name)} 0\.0$", exposed, re.M), name
        assert _status(_post_http10(base, nonced)) == ocsp.OCSPResponseStatus.SUCCESSFUL


async def test_a_refusal_that_cannot_reach_its_serving_process_is_a_503(tmp_path: Path) -> None:
    """The main process's share full, and its serving process gone right after its offer (its descriptors closed,
    handover.sock with them): a refusal cannot be sent, so nobody would answer the request; refused all the same,
    the connection was closed by both processes with its request unanswered. The main process keeps it and
    answers 503 itself."""
    component = _Signing({})

    def adopt(sock: socket.socket, carried: bytes) -> asyncio.Future[object]:
        raise AssertionError("adopted past the cap")

    path = str(tmp_path / "handover.sock")
    gate = ConnectionGate(cap=1)
    gate.open = 1  # the main process's share full
    adopter = Adopter(path, gate, adopt)
    adopter.start()
    loop = asyncio.get_running_loop()
    assert adopter.sock is not None
    loop.remove_reader(adopter.sock.fileno())  # busy: nothing accepted or read until later
    passer = Passer(path)
    runner, _, server = await _gated(component, {"handover": passer})
    try:
        client = await _client(server)
        await loop.sock_sendall(client, _wire(_body(b"nonce")))
        await _until(lambda: passer.waiting)
        (transit, _), = passer.waiting.values()
        assert transit.gated.transport is not None and passer.sock is not None
        transit.gated.transport.abort()  # the serving process dies: its descriptors are closed
        loop.remove_reader(passer.sock.fileno())
        passer.sock.close()
        passer.sock, passer.waiting = None, {}
        loop.add_reader(adopter.sock.fileno(), adopter._accept)  # the main process gets to it
        (status, fields, _), = await _answers(client, 1)
        assert status == b"HTTP/1.1 503 Service Unavailable" and fields["Retry-After"] == "1"
        assert await asyncio.wait_for(loop.sock_recv(client, 1), 3) == b""
        assert adopter.late == 1 and adopter.refused == 0 and not component.signing
        client.close()
    finally:
        server.close()
        await runner.cleanup()
        passer.close()
        adopter.close()


def test_offers_read_late_in_a_burst_are_each_answered_503(demo: Path) -> None:
    """The main process frozen past ``request_timeout`` while more connections than ``LINGER`` were offered: when it
    reads them, every one is too late to hand back, and every one is answered 503, not only the first ``LINGER``
    (a refusal past the listener's cap beyond those is cut at once, with its request unanswered: here the serving
    process has let the connection go, nobody else would answer it)."""
    timeout, count = 2, 48
    demo.write_text(demo.read_text().replace(
        "[http]\n", f"[http]\nworkers = 2\nmax_connections = 300\nrequest_timeout = {timeout}\n", 1))
    with serve(demo) as served:
        base, main = served.base, served.proc.pid
        nonced = _requests(demo, nonce=True)[0]
        socks: list[socket.socket] = []
        try:
            with _stopped(main):
                for _ in range(count):
                    socks.append(_connect(base))
                    socks[-1].sendall(_wire_post(nonced))
                time.sleep(timeout + 1.5)  # every serving process gave its offers up
            statuses = []
            for sock in socks:
                sock.settimeout(10)
                try:
                    statuses.append(_Reader(sock).response()[0])
                except (ConnectionError, AssertionError, ValueError, IndexError) as exc:
                    statuses.append(repr(exc).encode())
            assert statuses == [b"HTTP/1.1 503 Service Unavailable"] * count
            assert _metric(base, LATE) == count
        finally:
            for sock in socks:
                sock.close()


def test_a_main_process_held_up_past_the_silence_limit_kills_no_serving_process(demo: Path) -> None:
    """The main process frozen longer than ``workers.SILENCE`` while its serving processes report on time: their
    reports wait in the pipes. Its silence timers fire before it reads them (once it runs again): that must not
    be taken for their silence and kill every one of them, with their clients' connections and requests."""
    demo.write_text(demo.read_text().replace("[http]\n", "[http]\nworkers = 2\nrequest_timeout = 2\n", 1))
    with serve(demo) as served:
        base, main = served.base, served.proc.pid
        workers = set(_workers(main))
        with _stopped(main):
            time.sleep(17)
        time.sleep(3)
        assert _metric(base, "annuaire_http_worker_restarts_total") == 0
        assert set(_workers(main)) == workers
        assert "killed" not in served.output
