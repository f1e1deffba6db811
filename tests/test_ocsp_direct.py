"""OCSP requests answered from the connection's bytes before aiohttp (``ocsp/direct.py``).

The parser takes a strict subset of HTTP/1.1 and leaves everything else to aiohttp; against the real service
(plain sockets, one and two serving processes) the answers are aiohttp's own, header for header, in order
when pipelined with requests aiohttp answers; smuggling attempts, clients that do not read, idle connections
and ``Connection: close`` are handled as aiohttp handles them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from directory.service.listener import ConnectionGate
from directory.service.sockets import listen
from ocsp.direct import MAX_HEAD, MAX_PENDING, WRITE_LIMIT, DirectAnswers, parse
from ocsp.lookup import Outcome
from tests.served import http, serve

BODY = b"0" * 10
POST = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\nContent-Length: 10\r\n\r\n" + BODY


def _post(*fields: bytes, body: bytes = BODY, line: bytes = b"POST /ocsp HTTP/1.1") -> bytes:
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


OK_FIELDS = (b"Host: x", b"Content-Type: application/ocsp-request", b"Content-Length: 10")


def test_the_subset_taken() -> None:
    assert parse(POST, 0) == (len(POST), BODY, False, "", False)
    taken = _post(b"Host: ocsp.example", b"content-type:application/OCSP-request", b"CONTENT-LENGTH:  10 ",
                  b"Connection: keep-alive", b"User-Agent: x y", b"X-Request-ID: abc-1", line=b"POST /ocsp/ HTTP/1.1")
    assert parse(taken, 0) == (len(taken), BODY, False, "abc-1", False)
    assert parse(_post(*OK_FIELDS, b"Connection: close"), 0)[4] is True  # type: ignore[index]
    get = b"GET /ocsp/MEIw%2B%2FA%3D HTTP/1.1\r\nHost: x\r\n\r\n"
    assert parse(get, 0) == (len(get), "/MEIw%2B%2FA%3D", True, "", False)
    two = POST + get  # pipelined: each from where the previous ended
    assert parse(two, 0)[0] == len(POST) and parse(two, len(POST)) == (len(two), "/MEIw%2B%2FA%3D", True, "", False)  # type: ignore[index]


@pytest.mark.parametrize("raw", [
    POST.replace(b"HTTP/1.1", b"HTTP/1.0"),  # other keep-alive rules: aiohttp's
    POST.replace(b"POST", b"post"),
    POST.replace(b"POST /ocsp", b"POST http://x/ocsp"),  # absolute form
    POST.replace(b"POST /ocsp", b"POST /ocsp?x=1"),
    POST.replace(b"POST /ocsp", b"POST  /ocsp"),
    POST.replace(b"POST /ocsp", b"PUT /ocsp"),
    _post(b"Host: x", b"Content-Type: application/ocsp-request"),  # no length
    _post(*OK_FIELDS, b"Content-Length: 10"),  # twice
    _post(*OK_FIELDS, b"Transfer-Encoding: chunked"),  # CL.TE
    _post(b"Host: x", b"Content-Type: application/ocsp-request", b"Content-Length: +10"),
    _post(b"Host: x", b"Content-Type: application/ocsp-request", b"Content-Length: 1 0"),
    _post(b"Host: x", b"Content-Type: application/ocsp-request", b"Content-Length: 0x0a"),
    _post(b"Host: x", b"Content-Type: application/ocsp-request", b"Content-Length: 10240000"),  # past MAX_BODY
    _post(*OK_FIELDS, b"Expect: 100-continue"),
    _post(*OK_FIELDS, b"Upgrade: h2c"),
    _post(*OK_FIELDS, b"Content-Encoding: gzip"),  # aiohttp would inflate the body
    _post(*OK_FIELDS, b"Connection: keep-alive, Upgrade"),
    _post(*OK_FIELDS, b"Connection: close", b"Connection: keep-alive"),
    _post(b"Host: x", b"Content-Type: text/plain", b"Content-Length: 10"),  # aiohttp's handler says malformedRequest
    _post(*OK_FIELDS, b"Content-Type: application/ocsp-request"),
    _post(*OK_FIELDS, b"X-Request-ID: a", b"X-Request-ID: b"),
    _post(*OK_FIELDS, b"X-Request-ID:", b"X-Request-ID: b"),  # aiohttp's path takes the first (empty) one
    _post(*OK_FIELDS[1:]),  # no Host: aiohttp's 400 (RFC 9112 3.2)
    _post(*OK_FIELDS, b"Host: y"),  # a second Host: aiohttp's 400
    _post(*OK_FIELDS, b"User-Agent: a", b"user-agent: b"),  # aiohttp refuses a second of its singletons
    _post(*OK_FIELDS, b"Proxy-Connection: close"),  # llhttp reads it as Connection: close
    _post(*OK_FIELDS, b"Sec-WebSocket-Key1: x"),  # aiohttp's 400
    _post(*OK_FIELDS, b"X-Folded: a", b" b"),  # obs-fold
    _post(*OK_FIELDS, b"X-Bad : a"),  # space before the colon
    _post(*OK_FIELDS, b"X-Bad: a\nb"),  # a bare LF inside a line
    _post(*OK_FIELDS, b"X-Bad: a\rb"),
    _post(*OK_FIELDS, b"X-Bad: a\x00b"),
    _post(*OK_FIELDS, b"X-Bad: caf\xc3\xa9"),
    _post(*OK_FIELDS, body=BODY[:9]),  # the body not all there yet
    POST[:40],  # the head not all there yet
    _post(*OK_FIELDS, b"X-Long: " + b"a" * MAX_HEAD),
    _post(*OK_FIELDS, *[b"X-%d: y" % n for n in range(40)]),
    b"\r\n" + POST,  # a leading empty line
    b"GET /ocsp HTTP/1.1\r\n\r\n",  # the empty GET: its own route
    b"GET /ocsp/MEIw HTTP/1.1\r\nX-Request-ID: a\r\n\r\n",  # no Host
    b"GET /ocsp/MEIw HTTP/1.1\r\nContent-Length: 4\r\n\r\nMEIw",  # a GET with a body
    b"GET /ocsp/ME Iw HTTP/1.1\r\n\r\n",
    b"GET /ocsp/ME\"Iw HTTP/1.1\r\n\r\n",
    b"GET /ocsp/MEIw#x HTTP/1.1\r\n\r\n",
    b"HEAD /ocsp/MEIw HTTP/1.1\r\n\r\n",
    b"GET /ocsp/MEIw HTTP/1.1\n\n",  # LF-only line ends
])
def test_anything_else_is_left_to_aiohttp(raw: bytes) -> None:
    assert parse(raw, 0) is None


def test_a_second_field_aiohttp_refuses_is_left_to_aiohttp() -> None:
    from aiohttp.http_parser import SINGLETON_HEADERS

    for name in SINGLETON_HEADERS:
        field = f"{name}: 10".encode()
        assert parse(_post(*OK_FIELDS, field, field), 0) is None, name


_SEEDS = (POST, _post(*OK_FIELDS, b"User-Agent: u", b"X-Request-ID: z", line=b"POST /ocsp/ HTTP/1.1"),
          b"GET /ocsp/MEIw%2B HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", b"")
_PIECES = (b"\r\n", b"\r", b"\n", b" ", b"\t", b":", b"\x00", b"\x7f", b"\x80", b"0", b"a", b"%", b"/", b"?", b"#",
           b",", b";", b'"', b"@", b"\x0b", b"..", b"%zz", b"HTTP/1.0", b"GET ", b"POST ", b"/ocsp", b"Host: x\r\n",
           b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n",
           b"Proxy-Connection: close\r\n", b"Upgrade: websocket\r\n", b"Connection: Upgrade\r\n",
           b"Content-Encoding: gzip\r\n", b"Expect: 100-continue\r\n", b"Sec-WebSocket-Key1: x\r\n",
           b"X-Request-ID: \r\n", b"User-Agent: v\r\n")


def test_what_is_taken_aiohttp_frames_the_same_way() -> None:
    """A differential fuzz: whatever parse() takes of mutated requests, aiohttp's own parser (llhttp) reads
    as the same requests (method, target, body, keep-alive), refusing none of them."""
    import random
    from unittest import mock

    from aiohttp.http_parser import HttpRequestParser

    loop = asyncio.new_event_loop()
    rng = random.Random(15)
    taken = 0
    try:
        for _ in range(4000):
            data = bytearray(rng.choice(_SEEDS[:3]) + rng.choice(_SEEDS))
            for _ in range(rng.randint(1, 3)):
                at = rng.randint(0, len(data))
                if rng.random() < 0.5:
                    data[at:at] = rng.choice(_PIECES)
                else:
                    del data[at:at + rng.randint(1, 3)]
            requests, pos = [], 0
            while (found := parse(bytes(data), pos)) is not None:
                requests.append(found)
                pos = found[0]
                if found[4]:  # Connection: close: what follows is not read
                    break
            if not requests:
                continue
            taken += len(requests)
            parser = HttpRequestParser(mock.Mock(), loop, 2**16, max_line_size=8190, max_field_size=8190)
            messages = parser.feed_data(bytes(data[:pos]))[0]
            assert len(messages) == len(requests), bytes(data)
            for (_, received, get, _, close), (message, payload) in zip(requests, messages, strict=True):
                assert (message.method, message.version, message.should_close) == (
                    "GET" if get else "POST", (1, 1), close), bytes(data)
                if get:
                    assert message.path == "/ocsp" + received, bytes(data)
                else:
                    body = b"".join(getattr(payload, "_buffer", ()))  # none: aiohttp's EmptyStreamReader
                    assert body == received and payload.is_eof(), bytes(data)
    finally:
        loop.close()
    assert taken > 500, taken  # the mutations leave enough taken to mean something


class _Transport:
    def __init__(self, buffered: int = 0) -> None:
        self.written: list[bytes] = []
        self.buffered = buffered
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.buffered += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class _Component:
    """What DirectAnswers reads of the OCSP component: ``responder.from_cache``, its counts, the latency."""

    def __init__(self, held: dict[bytes | str, Outcome]) -> None:
        self.counted: list[tuple[str, str]] = []
        self.responder = self
        self.metrics = self
        self.latency = self
        self.stats = self
        self.held = held

    def from_cache(self, received: bytes | str) -> object:
        return self.held.get(received, "a request to sign")

    def count(self, status: str, path: str) -> None:
        self.counted.append((status, path))

    def observe(self, path: str, seconds: float) -> None:
        pass


def test_answers_stop_at_what_aiohttp_takes_and_at_the_write_limit() -> None:
    outcome = Outcome(b"DER", "successful", "presigned", 1_700_000_000, 1_900_000_000, b"\x01\x02")
    component = _Component({BODY: outcome})
    direct = DirectAnswers(component, clock=lambda: 1_800_000_000.5)  # type: ignore[arg-type]
    other = POST.replace(b"Host: x", b"Host: x\r\nExpect: 100-continue")
    transport = _Transport()
    answers = direct.connection(transport, lambda: None)
    assert direct.answer(POST + POST + other + POST, answers) == 2 * len(POST)  # the third is aiohttp's
    assert len(transport.written) == 2 and component.counted == [("successful", "presigned")] * 2
    answer = transport.written[0]
    assert answer.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\n"
                             b"Cache-Control: no-cache, no-store\r\nX-Request-ID: ")
    assert b"\r\nContent-Length: 3\r\nDate: Fri, 15 Jan 2027 08:00:00 GMT\r\nServer: " in answer
    assert answer.endswith(b"\r\n\r\nDER")
    # a client that does not read: nothing more is written once WRITE_LIMIT bytes wait
    full = _Transport(buffered=WRITE_LIMIT + 1)
    assert direct.answer(POST, direct.connection(full, lambda: None)) == 0 and not full.written
    # Connection: close: answered, closed, what follows dropped
    closing = _Transport()
    data = _post(*OK_FIELDS, b"Connection: close") + POST
    assert direct.answer(data, direct.connection(closing, lambda: None)) == len(data)
    assert closing.closed and len(closing.written) == 1
    assert b"\r\nConnection: close\r\n\r\nDER" in closing.written[0]


class _Signing(_Component):
    """``_Component`` whose requests to sign are futures the test completes (``live_future``), by body."""

    def __init__(self, held: dict[bytes | str, Outcome]) -> None:
        super().__init__(held)
        self.signing: dict[bytes | str, asyncio.Future[Outcome]] = {}
        self.most = 0  # most futures in flight at once
        self.expired = 0  # given up at their deadline (``live_expired``)

    def live_expired(self, count: int) -> None:
        self.expired += count

    def live_future(self, received: bytes | str, request: object) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.signing[received] = future
        self.most = max(self.most, sum(not f.done() for f in self.signing.values()))
        return future

    def sign(self, received: bytes | str, body: bytes = b"") -> None:
        self.signing.pop(received).set_result(Outcome(body or b"L" + received, "successful", "live", 1, 2, b"\x09"))


def _body(tag: bytes) -> bytes:
    return tag.ljust(10, b".")


def _wire(body: bytes, *extra: bytes) -> bytes:
    return _post(*OK_FIELDS, *extra, body=body)


async def _gated(component: _Component, gate_kwargs: dict[str, object] | None = None,
                 routes: bool = False) -> tuple[web.AppRunner, ConnectionGate, asyncio.AbstractServer]:
    app = web.Application()
    if routes:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(body=b"hello")
        app.router.add_get("/hello", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    gate = ConnectionGate(8, 5.0, direct=DirectAnswers(component), **(gate_kwargs or {}))  # type: ignore[arg-type]
    return runner, gate, await listen(runner, "127.0.0.1", 0, gate)


async def _answers(sock: socket.socket, count: int, timeout: float = 5.0) -> list[tuple[bytes, dict[str, str], bytes]]:
    """``count`` responses read off a non-blocking socket (Content-Length framing)."""
    loop = asyncio.get_running_loop()
    buffer, out = b"", []
    deadline = loop.time() + timeout
    while len(out) < count:
        while b"\r\n\r\n" in buffer:
            head, rest = buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            fields = {n: v.strip() for n, v in (line.split(":", 1) for line in lines[1:])}
            size = int(fields["Content-Length"])
            if len(rest) < size:
                break
            out.append((lines[0].encode(), fields, rest[:size]))
            buffer = rest[size:]
        if len(out) >= count:
            break
        assert loop.time() < deadline, (out, buffer)
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), max(0.01, deadline - loop.time()))
        assert chunk, f"closed after {len(out)} answers"
        buffer += chunk
    return out


async def _client(server: asyncio.AbstractServer) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, server.sockets[0].getsockname())
    return sock


async def _until(condition: Callable[[], object], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never met"
        await asyncio.sleep(0.01)


async def test_live_answers_keep_the_order_of_pipelined_requests() -> None:
    """Held, signed, held, signed, held in one write: the held ones wait for the signed ones before them, and
    signatures finishing out of order change nothing; the answers carry their own request ids."""
    held = Outcome(b"HELD", "successful", "presigned", 1_700_000_000, 1_900_000_000, b"\x01")
    component = _Signing({_body(b"h"): held})
    runner, _, server = await _gated(component)
    try:
        sock = await _client(server)
        with sock:
            wires = [_wire(_body(b"h"), b"X-Request-ID: r1"), _wire(_body(b"s1"), b"X-Request-ID: r2"),
                     _wire(_body(b"h"), b"X-Request-ID: r3"), _wire(_body(b"s2"), b"X-Request-ID: r4"),
                     _wire(_body(b"h"), b"X-Request-ID: r5")]
            await asyncio.get_running_loop().sock_sendall(sock, b"".join(wires))
            assert [a[2] for a in await _answers(sock, 1)] == [b"HELD"]  # nothing before it: at once
            await _until(lambda: len(component.signing) == 2)
            component.sign(_body(b"s2"))  # the later signature first: nothing may leave yet
            await asyncio.sleep(0.1)
            component.sign(_body(b"s1"))
            answers = await _answers(sock, 4)
        assert [a[2] for a in answers] == [b"L" + _body(b"s1"), b"HELD", b"L" + _body(b"s2"), b"HELD"]
        assert [a[1]["X-Request-ID"] for a in answers] == ["r2", "r3", "r4", "r5"]
        assert [a[1]["Cache-Control"] for a in answers] == ["no-cache, no-store"] * 4
        assert sorted(component.counted) == [("successful", "live")] * 2 + [("successful", "presigned")] * 3
    finally:
        server.close()
        await runner.cleanup()


async def test_live_answers_in_flight_are_bounded_and_what_follows_waits_for_them() -> None:
    """Past MAX_PENDING answers in flight on a connection, the rest of the read waits (reading paused) and is
    taken up once they are written; a request aiohttp must answer after answers in flight gets its answer
    after theirs, from aiohttp (the connection handed over at that request's first byte)."""
    component = _Signing({})
    runner, _, server = await _gated(component, routes=True)
    try:
        sock = await _client(server)
        with sock:
            count = MAX_PENDING * 2 + 3
            bodies = [_body(b"s%d" % n) for n in range(count)]
            await asyncio.get_running_loop().sock_sendall(
                sock, b"".join(_wire(b) for b in bodies) + b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                + _wire(_body(b"after")))
            signed = 0
            while signed < count:
                await _until(lambda: component.signing)
                assert len(component.signing) <= MAX_PENDING
                await asyncio.sleep(0.02)  # room for more to arrive, were they not bounded
                for received in list(component.signing):
                    component.sign(received)
                    signed += 1
            answers = await _answers(sock, count + 2)
            assert component.most == MAX_PENDING
            assert [a[2] for a in answers[:count]] == [b"L" + b for b in bodies]
            assert answers[count][2] == b"hello" and "X-Request-ID" not in answers[count][1]  # aiohttp's
            # the connection is aiohttp's now: the last request reached its (empty) application, not ``direct``
            assert answers[count + 1][0] == b"HTTP/1.1 404 Not Found" and not component.signing
    finally:
        server.close()
        await runner.cleanup()


async def test_a_client_gone_while_signing_and_failed_signatures() -> None:
    """A client that leaves while its answers are signed: they are cancelled, nothing is written, its slot is
    given back. A signature that fails is internalError for that request alone, a cancelled one or one whose
    signer could not be reached (a serving process's) tryLater;
    end of input and ``Connection: close`` close the connection once the answers in flight are written."""
    component = _Signing({})
    runner, gate, server = await _gated(component)
    loop = asyncio.get_running_loop()
    try:
        sock = await _client(server)  # reset: the connection is lost at once
        await loop.sock_sendall(sock, _wire(_body(b"gone1")) + _wire(_body(b"gone2")))
        await _until(lambda: len(component.signing) == 2)
        futures = list(component.signing.values())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        await _until(lambda: gate.open == 0 and not gate.held)
        assert all(f.cancelled() for f in futures)
        component.signing.clear()
        sock = await _client(server)  # closed: only an end of input, seen as a half-close until written to
        await loop.sock_sendall(sock, _wire(_body(b"gone3")))
        await _until(lambda: component.signing)
        sock.close()
        await asyncio.sleep(0.1)
        component.sign(_body(b"gone3"))
        await _until(lambda: gate.open == 0 and not gate.held)

        sock = await _client(server)
        with sock:
            await loop.sock_sendall(sock, _wire(_body(b"bad")) + _wire(_body(b"cut")) + _wire(_body(b"lost"))
                                    + _wire(_body(b"ok")))
            await _until(lambda: len(component.signing) == 4)
            component.signing.pop(_body(b"bad")).set_exception(RuntimeError("boom"))
            component.signing.pop(_body(b"cut")).cancel()
            component.signing.pop(_body(b"lost")).set_exception(ConnectionError("the main process went away"))
            sock.shutdown(socket.SHUT_WR)  # end of input with an answer still in flight
            await asyncio.sleep(0.05)
            component.sign(_body(b"ok"))
            answers = await _answers(sock, 4)
            assert [ocsp.load_der_ocsp_response(a[2]).response_status for a in answers[:3]] == [
                ocsp.OCSPResponseStatus.INTERNAL_ERROR, ocsp.OCSPResponseStatus.TRY_LATER,
                ocsp.OCSPResponseStatus.TRY_LATER]
            assert answers[3][2] == b"L" + _body(b"ok")
            assert await asyncio.wait_for(loop.sock_recv(sock, 10), 3) == b""  # then closed
        assert ("internalError", "error") in component.counted and ("tryLater", "error") in component.counted

        sock = await _client(server)
        with sock:
            await loop.sock_sendall(sock, _wire(_body(b"last"), b"Connection: close") + _wire(_body(b"never")))
            await _until(lambda: component.signing)
            component.sign(_body(b"last"))
            answers = await _answers(sock, 1)
            assert answers[0][1]["Connection"] == "close" and list(component.signing) == []
            assert await asyncio.wait_for(loop.sock_recv(sock, 10), 3) == b""
        await _until(lambda: gate.open == 0)
    finally:
        server.close()
        await runner.cleanup()


async def test_shutdown_waits_for_answers_being_signed_then_gives_up() -> None:
    """At shutdown an idle held connection is closed at once; one with an answer being signed gets it, then is
    closed; one whose signature never comes is aborted after the grace period. Nor is a connection with
    answers in flight closed as idle meanwhile."""
    component = _Signing({})
    runner, gate, server = await _gated(component, {"idle_timeout": 0.2})
    loop = asyncio.get_running_loop()
    try:
        signing, stuck = await _client(server), await _client(server)
        with signing, stuck:
            await loop.sock_sendall(signing, _wire(_body(b"slow")))
            await loop.sock_sendall(stuck, _wire(_body(b"stuck")))
            await _until(lambda: len(component.signing) == 2)
            await asyncio.sleep(0.5)  # past idle_timeout: not closed, answers are in flight
            assert gate.open == 2
            idle = await _client(server)
            await _until(lambda: gate.open == 3)
            server.close()
            gate.close_held()
            await loop.sock_sendall(signing, _wire(_body(b"too late")))  # not taken: the service is stopping
            assert await asyncio.wait_for(loop.sock_recv(idle, 10), 3) == b""
            idle.close()
            waiting = asyncio.ensure_future(gate.wait_held(1.0))
            await asyncio.sleep(0.1)
            component.sign(_body(b"slow"))
            assert (await _answers(signing, 1))[0][2] == b"L" + _body(b"slow")
            assert await asyncio.wait_for(loop.sock_recv(signing, 10), 3) == b""
            assert _body(b"too late") not in component.signing
            await waiting
            try:
                end = await asyncio.wait_for(loop.sock_recv(stuck, 10), 3)
            except ConnectionResetError:  # aborted (what it reads first depends on timing)
                end = b""
            assert end == b"" and component.signing[_body(b"stuck")].cancelled()  # given up
            await _until(lambda: gate.open == 0 and not gate.held)
    finally:
        server.close()
        await runner.cleanup()


async def test_an_answer_not_signed_within_the_request_deadline_is_try_later(
        caplog: pytest.LogCaptureFixture) -> None:
    """A signer that never answers (stuck HSM, swamped lane) must not hold a connection forever: past the
    request deadline the answer is tryLater, in its turn (what is held behind it follows), its signature is
    cancelled, and the connection goes on answering and is closed when idle as any other. What is logged
    names the request ids."""
    held = Outcome(b"HELD", "successful", "presigned", 1_700_000_000, 1_900_000_000, b"\x01")
    component = _Signing({_body(b"h"): held})
    runner, gate, server = await _gated(component, {"idle_timeout": 1.0})
    gate.request_timeout = 0.3
    loop = asyncio.get_running_loop()
    try:
        sock = await _client(server)
        with sock:
            started = loop.time()
            await loop.sock_sendall(sock, _wire(_body(b"stuck"), b"X-Request-ID: r1") + _wire(_body(b"h")))
            await _until(lambda: component.signing)
            stuck = component.signing[_body(b"stuck")]
            await asyncio.sleep(0.1)
            await loop.sock_sendall(sock, _wire(_body(b"later")))  # its own deadline, 0.1 s after the first's
            await _until(lambda: len(component.signing) == 2)
            answers = await _answers(sock, 2)
            assert 0.29 < loop.time() - started < 2.0
            assert ocsp.load_der_ocsp_response(answers[0][2]).response_status == ocsp.OCSPResponseStatus.TRY_LATER
            assert answers[0][1]["X-Request-ID"] == "r1" and answers[1][2] == b"HELD"
            assert stuck.cancelled() and ("tryLater", "error") in component.counted and component.expired == 1
            assert any("not signed within" in r.getMessage() and "r1" in r.getMessage() for r in caplog.records)
            later = await _answers(sock, 1)  # the second, on its own deadline
            assert ocsp.load_der_ocsp_response(later[0][2]).response_status == ocsp.OCSPResponseStatus.TRY_LATER
            assert component.expired == 2
            await loop.sock_sendall(sock, _wire(_body(b"failed"), b"X-Request-ID: r9") + _wire(_body(b"signed")))
            await _until(lambda: _body(b"signed") in component.signing)
            component.signing.pop(_body(b"failed")).set_exception(RuntimeError("boom"))
            component.sign(_body(b"signed"))
            answers = await _answers(sock, 2)
            assert answers[1][2] == b"L" + _body(b"signed")  # still answering
            assert [getattr(r, "request_id", None) for r in caplog.records if r.exc_info] == ["r9"]
            assert await asyncio.wait_for(loop.sock_recv(sock, 10), 3) == b""  # then closed when idle
        await _until(lambda: gate.open == 0 and not gate.held)
    finally:
        server.close()
        await runner.cleanup()


async def test_a_client_that_reads_nothing_of_answers_written_after_it_closed_is_cut_off() -> None:
    """A client sends a request to sign and ends its input (or asks Connection: close), then reads nothing:
    the answer, written once signed, waits unsent behind the connection's graceful close. The idle timer,
    which went by while the answer was signed, must still be there to abort it (it once was not re-set on
    that path: the connection and its slot were held for good)."""
    component = _Signing({})
    runner, gate, server = await _gated(component, {"idle_timeout": 0.3})
    loop = asyncio.get_running_loop()
    try:
        for ending in (b"", b"Connection: close"):
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setblocking(False)
                await loop.sock_connect(sock, server.sockets[0].getsockname())
                await loop.sock_sendall(sock, _wire(_body(b"s"), *([ending] if ending else [])))
                if not ending:
                    sock.shutdown(socket.SHUT_WR)
                await _until(lambda: component.signing)
                gated = next(iter(gate.held))
                assert gated.transport is not None  # socket buffers as small as on a network path (not loopback's)
                gated.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                await asyncio.sleep(0.5)  # past idle_timeout while the answer is being signed
                component.sign(_body(b"s"), b"x" * 40_000)  # more than the socket buffers take, less than
                await asyncio.sleep(0)                       # the transport's high-water mark
                assert gated.transport is not None and 0 < gated.transport.get_write_buffer_size() < 65536
                stalled = gate.stalled
                await _until(lambda: gate.open == 0 and not gate.held)
                assert gate.stalled == stalled + 1
    finally:
        server.close()
        await runner.cleanup()


async def test_a_failure_while_taking_up_what_waited_aborts_the_connection() -> None:
    """Answers are written, and what waited behind them taken up, from a done-callback, whose exceptions
    asyncio only logs: a failure there aborts the connection. It once left it open for good: here a signer
    handing back what is not an answer (a bug) left that answer first in line, in flight forever (never
    idle, never past its deadline: its future is done); the signer refusing the next request leaves what
    waited taken and nothing to take it up."""

    class Failing(_Signing):
        def live_future(self, received: bytes | str, request: object) -> asyncio.Future[Outcome]:
            if received == _body(b"boom"):
                raise RuntimeError("a bug in the signer")
            return super().live_future(received, request)

    component = Failing({})
    runner, gate, server = await _gated(component, {"idle_timeout": 0.2})
    loop = asyncio.get_running_loop()
    try:
        sock = await _client(server)
        with sock:
            await loop.sock_sendall(sock, _wire(_body(b"bad")))
            await _until(lambda: component.signing)
            component.signing.pop(_body(b"bad")).set_result(None)  # type: ignore[arg-type]
            await _until(lambda: gate.open == 0 and not gate.held)  # aborted
        sock = await _client(server)
        with sock:
            bodies = [_body(b"s%d" % n) for n in range(MAX_PENDING)]
            await loop.sock_sendall(sock, b"".join(_wire(b) for b in bodies) + _wire(_body(b"boom")))
            await _until(lambda: len(component.signing) == MAX_PENDING)
            for body in bodies:
                component.sign(body)
            await _until(lambda: gate.open == 0 and not gate.held)  # aborted (its answers may be lost with it)
    finally:
        server.close()
        await runner.cleanup()


async def test_aiohttp_flow_control_holds_after_a_handover_that_waited() -> None:
    """Requests that waited behind an answer being signed, handed to aiohttp once it is written: when they are
    more than aiohttp queues (a handler still busy), aiohttp pauses reading, and the gate must not undo that
    pause (it once resumed reading after the handover: aiohttp, counting on its pause, then buffered whatever
    the client sent, without bound)."""
    component = _Signing({})
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(body=b"slow")

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=b"hello")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    gate = ConnectionGate(8, 5.0, direct=DirectAnswers(component))  # type: ignore[arg-type]
    server = await listen(runner, "127.0.0.1", 0, gate)
    loop = asyncio.get_running_loop()
    try:
        sock = await _client(server)
        with sock:
            pipelined = 40
            await loop.sock_sendall(sock, _wire(_body(b"s")) + b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                                    + b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n" * pipelined)
            await _until(lambda: component.signing)
            gated = next(iter(gate.held))
            assert gated.waiting is not None and gated.transport is not None
            component.sign(_body(b"s"))
            assert (await _answers(sock, 1))[0][2] == b"L" + _body(b"s")
            await _until(lambda: gated.direct is None)  # aiohttp's now, its queue full behind /slow
            await asyncio.sleep(0.1)
            assert not gated.transport.is_reading()  # aiohttp's pause (its queue is full) stands
            release.set()
            answers = await _answers(sock, 1 + pipelined)
            assert [a[2] for a in answers] == [b"slow"] + [b"hello"] * pipelined
    finally:
        server.close()
        await runner.cleanup()


async def test_writing_paused_then_resumed_leaves_the_connection_answering() -> None:
    """The transport's flow control pausing and resuming writes on a held connection changes nothing of how
    its next reads are answered (resume_writing once lost the gate's loop, and the next read failed)."""
    from directory.service.listener import _Gated

    held = Outcome(b"HELD", "successful", "presigned", 1_700_000_000, 1_900_000_000, b"\x01")

    class Transport(_Transport):
        def is_closing(self) -> bool:
            return self.closed

        def pause_reading(self) -> None: ...

        def resume_reading(self) -> None: ...

    gate = ConnectionGate(4, 5.0, direct=DirectAnswers(_Component({BODY: held})))  # type: ignore[arg-type]
    gated = _Gated(object(), gate)
    transport = Transport()
    gated.connection_made(transport)  # type: ignore[arg-type]
    gated.data_received(POST)
    gated.pause_writing()
    gated.resume_writing()
    gated.data_received(POST)
    assert len(transport.written) == 2 and not transport.closed
    gated.connection_lost(None)
    assert gate.open == 0 and not gate.held


async def test_an_idle_client_that_does_not_read_is_cut_off() -> None:
    """A connection the gate answers is closed when idle; one whose answers are still unsent then (the client
    does not read) is aborted: a graceful close would wait for it forever, holding its slot."""
    big = Outcome(b"x" * (8 * 1024 * 1024), "successful", "presigned")  # more than the socket buffers take
    runner = web.AppRunner(web.Application())
    await runner.setup()
    gate = ConnectionGate(4, 5.0, idle_timeout=0.3, direct=DirectAnswers(_Component({BODY: big})))  # type: ignore[arg-type]
    server = await listen(runner, "127.0.0.1", 0, gate)
    loop = asyncio.get_running_loop()
    try:
        for request in (POST, POST.replace(b"Host: x", b"Host: x\r\nConnection: close")):
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setblocking(False)
                await loop.sock_connect(sock, server.sockets[0].getsockname())
                await loop.sock_sendall(sock, request)
                deadline = loop.time() + 3
                while gate.open and loop.time() < deadline:
                    await asyncio.sleep(0.05)
                assert gate.open == 0 and not gate.held, request
        assert gate.stalled >= 1  # counted (annuaire_http_stalled_readers_total): the kept-alive one at least
    finally:
        server.close()
        await runner.cleanup()


async def test_a_client_that_reads_nothing_is_cut_off_but_a_slow_reader_is_not() -> None:
    """Past WRITE_LIMIT the direct path leaves a connection to aiohttp's flow control, whose handler waits in
    ``drain()`` for as long as the client does not read: the gate aborts a connection of which the client takes
    nothing for ``request_timeout`` while writing is paused, and keeps one that reads, however slowly."""
    from directory.service.app import fronted

    big = b"x" * (16 * 1024 * 1024)  # more than the socket buffers take

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=big)

    app = web.Application()
    app.router.add_get("/big", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    assert runner.server is not None
    runner.server.request_handler = fronted(runner.server.request_handler)  # type: ignore[arg-type]
    gate = ConnectionGate(4, 0.5)
    server = await listen(runner, "127.0.0.1", 0, gate)
    loop = asyncio.get_running_loop()

    async def client(reads: bool) -> int:
        with socket.socket() as sock:
            if not reads:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, server.sockets[0].getsockname())
            await loop.sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            got, deadline = 0, loop.time() + 8
            while loop.time() < deadline:
                await asyncio.sleep(0.01 if reads else 0.1)
                if not gate.open:
                    return got
                if reads:
                    try:
                        chunk = sock.recv(131072)  # 13 MB/s at most: the answer takes more than 0.5 s
                    except BlockingIOError:
                        continue
                    if not chunk:
                        return got
                    got += len(chunk)
                    if got > len(big):
                        return got
            return -1

    try:
        assert await client(reads=False) == 0  # aborted, not left open
        assert await client(reads=True) > len(big)  # read whole
        assert gate.stalled == 1
        gate.cut_stalled_readers = False  # the internal listener: its clients are the serving processes
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client(reads=False), 2)
    finally:
        server.close()
        await runner.cleanup()


# -- against the service ---------------------------------------------------------------------------------------

def _requests(demo: Path, nonce: bool = False) -> list[bytes]:
    d = demo.parent
    manifest = json.loads((d / "certs" / "manifest.json").read_text())
    issuer = x509.load_pem_x509_certificate((d / "ca" / "ac-personnes.pem").read_bytes())
    out = []
    for entry in [m for m in manifest if m["issuer"] == "ac-personnes" and m["status"] == "good"][:3]:
        cert = x509.load_pem_x509_certificate((d / "certs" / entry["file"]).read_bytes())
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
        if nonce:
            builder = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
        out.append(builder.build().public_bytes(serialization.Encoding.DER))
    return out


def _wire_post(der: bytes, *extra: bytes) -> bytes:
    return _post(b"Host: x", b"Content-Type: application/ocsp-request", b"Content-Length: %d" % len(der), *extra,
                 body=der)


def _wire_get(der: bytes) -> bytes:
    return b"GET /ocsp/%s HTTP/1.1\r\nHost: x\r\n\r\n" % urllib.parse.quote(base64.b64encode(der)).encode()


class _Reader:
    """HTTP/1.1 responses read off a socket, one at a time (Content-Length framing)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def response(self) -> tuple[bytes, list[tuple[str, str]], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        fields = [(n, v.strip()) for n, v in (line.split(":", 1) for line in lines[1:])]
        size = int(dict((n.lower(), v) for n, v in fields)["content-length"])
        while len(self.buffer) < size:
            self._more()
        body, self.buffer = self.buffer[:size], self.buffer[size:]
        return lines[0].encode(), fields, body

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, "connection closed early"
        self.buffer += chunk


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _presigned_count(base: str) -> float:
    metrics = http(base + "/metrics")[2].decode()
    found = re.search(r'^annuaire_ocsp_responses_by_path_total\{path="presigned"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def _until_held(base: str, der: bytes) -> None:
    """Wait until the answer to ``der`` is pre-signed (the direct path's case) and its request known."""
    deadline = time.monotonic() + 30
    while True:
        before = _presigned_count(base)
        http(base + "/ocsp", "POST", der, {"Content-Type": "application/ocsp-request"})
        if _presigned_count(base) > before:
            return
        assert time.monotonic() < deadline, "no pre-signed answer"
        time.sleep(0.3)


def _shape(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header names in order, and their values but those that differ per answer (max-age counts down)."""
    return [(n, "" if n in ("Date", "X-Request-ID") else re.sub(r"max-age=\d+", "max-age=N", v)) for n, v in fields]


_Answer = tuple[bytes, list[tuple[str, str]], bytes]  # status line, headers, body (``_Reader.response``)


def _both_ways(base: str, wire: bytes) -> tuple[_Answer, _Answer]:
    """``wire`` answered by the gate (sent whole in one write) and by aiohttp (its last bytes held back a
    moment, so the gate hands the connection over): both answers, checked to be 200s with the same headers."""
    with _connect(base) as direct_sock, _connect(base) as split_sock:
        direct_sock.sendall(wire)
        direct = _Reader(direct_sock).response()
        split_sock.sendall(wire[:-3])
        time.sleep(0.2)
        split_sock.sendall(wire[-3:])
        via_aiohttp = _Reader(split_sock).response()
    assert direct[0] == via_aiohttp[0] == b"HTTP/1.1 200 OK"
    assert _shape(direct[1]) == _shape(via_aiohttp[1]), (direct[1], via_aiohttp[1])
    return direct, via_aiohttp


@pytest.mark.parametrize("workers", [1, 2])
def test_same_answers_as_aiohttp_in_order_and_bounded(demo: Path, workers: int) -> None:
    demo.write_text(demo.read_text().replace("[http]\n", f"[http]\nworkers = {workers}\nidle_timeout = 2\n", 1))
    requests = _requests(demo)
    nonced = _requests(demo, nonce=True)[0]
    with serve(demo) as served:
        base = served.base
        for der in requests:
            _until_held(base, der)
        for wire in (_wire_post(requests[0]), _wire_get(requests[0])):
            # answered directly (whole in one write), then by aiohttp (the body held back a moment)
            direct, via_aiohttp = _both_ways(base, wire)
            assert direct[2] == via_aiohttp[2]
            assert ocsp.load_der_ocsp_response(direct[2]).certificate_status == ocsp.OCSPCertStatus.GOOD
        for wire in (_wire_post(nonced), _wire_get(nonced)):  # signed live: from the gate, and by aiohttp
            direct, via_aiohttp = _both_ways(base, wire)
            asked = ocsp.load_der_ocsp_request(nonced).extensions.get_extension_for_class(x509.OCSPNonce).value
            for _, _, body in (direct, via_aiohttp):
                parsed = ocsp.load_der_ocsp_response(body)
                assert parsed.certificate_status == ocsp.OCSPCertStatus.GOOD
                assert parsed.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == asked.nonce

        # pipelined in one write: held, signed live (a nonce), held by GET, held: four answers, in order
        with _connect(base) as sock:
            sock.sendall(_wire_post(requests[0]) + _wire_post(nonced) + _wire_get(requests[1])
                         + _wire_post(requests[2], b"X-Request-ID: mine-7"))
            reader = _Reader(sock)
            answers = [reader.response() for _ in range(4)]
        parsed = [ocsp.load_der_ocsp_response(body) for _, _, body in answers]
        serials = [ocsp.load_der_ocsp_request(der).serial_number for der in
                   (requests[0], nonced, requests[1], requests[2])]
        assert [p.serial_number for p in parsed] == serials
        nonce = parsed[1].extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        asked = ocsp.load_der_ocsp_request(nonced).extensions.get_extension_for_class(x509.OCSPNonce)
        assert nonce == asked.value.nonce
        assert dict(answers[3][1])["X-Request-ID"] == "mine-7"

        # smuggling: a request whose framing aiohttp reads otherwise is never answered from its inner bytes
        inner = _wire_post(requests[1])
        for framing in (b"Content-Length: %d\r\nTransfer-Encoding: chunked" % len(inner),
                        b"Content-Length: %d\r\nContent-Length: %d" % (len(inner), len(inner))):
            with _connect(base) as sock:
                sock.sendall(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
                             + framing + b"\r\n\r\n" + inner)
                status, _, body = _Reader(sock).response()
            assert re.match(rb"HTTP/1\.[01] 400 ", status), (framing, status, body)
        # what aiohttp refuses is refused, not answered from the cache: an HTTP/1.1 request without Host
        with _connect(base) as sock:
            sock.sendall(_wire_get(requests[0]).replace(b"Host: x\r\n", b""))
            status, _, body = _Reader(sock).response()
        assert re.match(rb"HTTP/1\.[01] 400 ", status) and b"Host" in body, (status, body)

        # Connection: close: answered, then closed
        with _connect(base) as sock:
            sock.sendall(_wire_post(requests[0], b"Connection: close") + _wire_post(requests[1]))
            reader = _Reader(sock)
            _, fields, _ = reader.response()
            assert ("Connection", "close") in fields
            sock.settimeout(5)
            assert sock.recv(65536) == b"" and reader.buffer == b""

        # a client pipelining thousands of requests without reading: answered in order once it reads, and the
        # service's queued bytes stay bounded meanwhile (the direct path stops at WRITE_LIMIT, aiohttp waits)
        many = 3000
        wires = [_wire_get(requests[n % 3]) for n in range(many)]
        with _connect(base) as sock:
            sender = threading.Thread(target=sock.sendall, args=(b"".join(wires),), daemon=True)
            sender.start()
            time.sleep(1.0)
            reader = _Reader(sock)
            got = [ocsp.load_der_ocsp_response(reader.response()[2]).serial_number for _ in range(many)]
            sender.join(10)
        serial_of = [ocsp.load_der_ocsp_request(der).serial_number for der in requests]
        assert got == [serial_of[n % 3] for n in range(many)]

        # idle: a connection answered directly is closed after idle_timeout (2 s here)
        with _connect(base) as sock:
            sock.sendall(_wire_get(requests[0]))
            _Reader(sock).response()
            started = time.monotonic()
            sock.settimeout(6)
            assert sock.recv(1) == b""
            assert 1.5 < time.monotonic() - started < 4.5
        assert http(base + "/readyz")[0] == 200
        # every process's count of clients cut off for reading nothing is in /metrics (none here: they all read)
        metrics = http(base + "/metrics")[2].decode()
        assert 'annuaire_http_stalled_readers_total{listener="public"} 0.0' in metrics
        kept = _connect(base)  # answered directly and kept alive when the service stops
        kept.sendall(_wire_get(requests[0]))
        _Reader(kept).response()
    with kept:  # closed by the stop, as aiohttp closes its own kept-alive connections
        kept.settimeout(5)
        assert kept.recv(1) == b""
