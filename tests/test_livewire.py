"""The serving processes' channel to the main process's signer (``directory/service/livewire.py``), on a real
unix socket: many requests in flight on one connection, answered out of order and matched by number; a
malformed or oversized frame drops the connection and the waiting requests fail (their callers answer
tryLater); a new connection is opened on the next request; an answer that fails is internalError for its
request alone; no answer in time is a timeout, not a lost connection. The whole path with the HSM is in
test_workers."""

from __future__ import annotations

import asyncio
import random
import struct
import threading
import time
from pathlib import Path

import pytest

from directory.service.livewire import (
    MAX_FRAME,
    LiveClient,
    LiveServer,
    live_payload,
    outcome_of,
    pack_request,
    unpack_request,
)
from ocsp.live import Backlog, LiveLane
from ocsp.lookup import Outcome
from ocsp.request import CertId, Request

_delays = random.Random(15)


async def _answer(received: bytes | str | Request, deadline: float = 0.0) -> Outcome:
    if isinstance(received, Request):
        return Outcome(repr(received).encode(), "successful", "live", 1, None, b"\x02")
    body = received.encode() if isinstance(received, str) else received
    if body == b"never answered":
        await asyncio.Event().wait()
    if body == b"fails":
        raise RuntimeError("a bug in the signer")
    await asyncio.sleep(_delays.random() / 100)  # signed in any order
    return Outcome(b"answer to " + body, "successful", "live", 1, 2, b"\x01")


async def test_requests_in_flight_are_matched_to_their_answers(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    server = await asyncio.get_running_loop().create_unix_server(lambda: LiveServer(_answer), path)
    client = LiveClient(path)
    try:
        asks = [client.ask("post" if n % 2 else "get", b"request %d" % n) for n in range(500)]
        answers = await asyncio.gather(*asks)
        assert [a.body for a in answers] == [b"answer to request %d" % n for n in range(500)]
        assert answers[0].status == "successful" and (answers[0].this_update, answers[0].next_update) == (1, 2)
        # a request whose answer fails gets internalError; the others in flight on the connection are not touched
        mixed = await asyncio.gather(client.ask("post", b"before"), client.ask("post", b"fails"),
                                     client.ask("post", b"after"))
        assert [a.body for a in (mixed[0], mixed[2])] == [b"answer to before", b"answer to after"]
        assert mixed[1].status == "internalError"
    finally:
        client.close()
        server.close()


async def test_a_malformed_frame_drops_the_connection_and_the_next_request_reconnects(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    server = await asyncio.get_running_loop().create_unix_server(lambda: LiveServer(_answer), path)
    client = LiveClient(path, timeout=5)
    try:
        assert (await client.ask("post", b"first")).body == b"answer to first"
        protocol = client._protocol
        assert protocol is not None
        waiting = asyncio.ensure_future(client.ask("post", b"never answered"))
        await asyncio.sleep(0)
        protocol.transport.write(struct.pack(">IIBQ", 7, MAX_FRAME + 1, 0, 0))  # oversized: dropped at once
        with pytest.raises(ConnectionError):
            await waiting
        assert (await client.ask("get", b"again")).body == b"answer to again"
        assert client._protocol is not protocol
        client._protocol.transport.write(struct.pack(">IIBQ", 8, 1, 9, 0) + b"x")  # an unknown kind
        await asyncio.sleep(0.1)
        assert client._protocol.lost
    finally:
        client.close()
        server.close()


async def test_no_main_process_is_a_connection_error_and_no_answer_a_timeout(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError):
        await LiveClient(str(tmp_path / "absent.sock")).ask("post", b"x")
    path = str(tmp_path / "live.sock")
    servers: list[LiveServer] = []

    def made() -> LiveServer:
        servers.append(LiveServer(_answer))
        return servers[-1]

    server = await asyncio.get_running_loop().create_unix_server(made, path)
    client = LiveClient(path, timeout=0.2)
    try:
        with pytest.raises(TimeoutError):  # the caller answers tryLater without asking again
            await client.ask("post", b"never answered")
        assert len(servers[0].tasks) == 1
        client.close()
        await asyncio.sleep(0.1)
        assert not servers[0].tasks  # what was being signed for a connection gone is cancelled
    finally:
        server.close()


_CID = CertId("sha1", b"n" * 20, b"k" * 20, 0x1234)


def test_parsed_requests_and_answers_cross_as_they_were() -> None:
    for request in (Request((_CID,), None), Request((_CID,), b"\x00" * 32),
                    Request((CertId("sha512", b"N" * 64, b"K" * 64, 0), CertId("sha256", b"n" * 32, b"k" * 32,
                                                                             2 ** 160 - 1)), b"x")):
        assert unpack_request(pack_request(request)) == request
    for outcome in (Outcome(b"DER", "successful", "live", 5, 6, b"\xab"), Outcome(b"", "tryLater", "shed")):
        back = outcome_of(live_payload(outcome))
        assert (back.body, back.status, back.path, back.this_update, back.next_update, back.etag) == (
            outcome.body, outcome.status, outcome.path, outcome.this_update, outcome.next_update, outcome.etag)


@pytest.mark.parametrize("packed", [
    b"", b"\x00", b"\x21" + b"n" * 33 + b"\x01",  # a nonce past MAX_NONCE
    b"\x00\x00",  # no CertID
    b"\x00\x65",  # more than 100
    b"\x00\x01\x09" + b"h" * 40 + b"\x01\x01",  # an unknown hash algorithm
    b"\x00\x01\x00" + b"h" * 40 + b"\x00",  # an empty serial
    b"\x00\x01\x00" + b"h" * 40 + b"\x16" + b"\xff" * 22,  # a serial past 20 octets
    b"\x00\x01\x00" + b"h" * 39 + b"\x01\x01",  # hashes cut short
    b"\x00\x01\x00" + b"h" * 40 + b"\x01\x01\x00",  # a byte too many
    b"\x05abc",  # a nonce cut short
])
def test_a_parsed_request_that_does_not_unpack_is_refused(packed: bytes) -> None:
    with pytest.raises(ValueError):
        unpack_request(packed)


async def test_a_parsed_request_is_answered_and_a_bad_one_is_internal_error(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    server = await asyncio.get_running_loop().create_unix_server(lambda: LiveServer(_answer), path)
    client = LiveClient(path, timeout=5)
    try:
        request = Request((_CID,), b"nonce")
        answer = await client.ask("request", request)
        assert answer.body == repr(request).encode() and answer.next_update is None and answer.etag == '"02"'
        assert (await client.ask("request", b"\x00\x00")).status == "internalError"  # and the connection stays
        assert (await client.ask("post", b"after")).body == b"answer to after"
    finally:
        client.close()
        server.close()


async def test_submit_needs_an_open_connection_and_fails_as_ask_does(tmp_path: Path) -> None:
    """``submit`` (the direct path's, no task) answers on the connection already open, and its future fails with
    TimeoutError when no answer comes in time, ConnectionError when the connection is lost."""
    path = str(tmp_path / "live.sock")
    server = await asyncio.get_running_loop().create_unix_server(lambda: LiveServer(_answer), path)
    client = LiveClient(path, timeout=0.2)
    try:
        assert client.submit("post", b"x") is None  # nothing open yet: ``ask`` opens it
        assert (await client.ask("post", b"first")).body == b"answer to first"
        asked = client.submit("request", Request((_CID,), None))
        assert asked is not None and (await asked).status == "successful"
        stuck = client.submit("post", b"never answered")
        assert stuck is not None
        with pytest.raises(TimeoutError):
            await stuck
        assert client._protocol is not None and not client._protocol.waiting  # nothing kept for it
        lost = client.submit("post", b"never answered")
        assert lost is not None
        await asyncio.sleep(0.05)
        client._protocol.transport.abort()
        with pytest.raises(ConnectionError):
            await lost
    finally:
        client.close()
        server.close()


async def test_the_main_process_bounds_what_waits_to_be_signed_and_gives_up_at_the_deadline(tmp_path: Path) -> None:
    """Past the signing lane's ``cap`` requests waiting to be signed, tryLater at once (path ``shed``); one still
    waiting at its deadline (``timeout`` after it was sent) is cancelled, answered tryLater and never signed (the
    signing thread, busy meanwhile, skips it); one already past it when read is never asked of the signer. Each
    counted, for the serving processes' source, in the lane's one ``Backlog``."""
    started: list[bytes] = []
    release = threading.Event()

    def sign(received: bytes) -> Outcome:  # a signing thread's HSM call, held up
        started.append(received)
        release.wait(10)
        return Outcome(b"answer to " + received, "successful", "live", 1, 2, b"\x01")

    loop = asyncio.get_running_loop()
    lane = LiveLane(sign, threads=1, cap=4)  # type: ignore[arg-type]
    lane.start(loop)
    backlog = lane.backlog
    path = str(tmp_path / "live.sock")
    server = await loop.create_unix_server(
        lambda: LiveServer(lambda r, d: lane.submit(r, "workers", d), backlog, timeout=0.5), path)  # type: ignore[arg-type]
    client = LiveClient(path, timeout=5)  # the main process's answers, not this side's timeout
    try:
        asks = [asyncio.ensure_future(client.ask("post", b"r%d" % n)) for n in range(6)]
        await asyncio.wait(asks[4:], timeout=0.3)
        assert [(a.result().status, a.result().path) for a in asks[4:]] == [("tryLater", "shed")] * 2
        assert backlog.full == {"local": 0, "workers": 2} and backlog.waiting == 4
        assert not any(a.done() for a in asks[:4])
        began = loop.time()
        answers = await asyncio.gather(*asks[:4])
        assert loop.time() - began < 1 and {(a.status, a.path) for a in answers} == {("tryLater", "error")}
        assert backlog.expired["workers"] == 4 and backlog.waiting == 0 and started == [b"r0"]
        protocol = client._protocol
        assert protocol is not None
        waiter: asyncio.Future[Outcome] = loop.create_future()
        protocol.wait(999, waiter, loop.time() + 5)
        protocol.transport.write(struct.pack(">IIBQ", 999, 3, 0, time.monotonic_ns() - 10**10) + b"old")
        assert (await waiter).status == "tryLater" and backlog.expired["workers"] == 5
        release.set()
        assert (await client.ask("post", b"fresh")).body == b"answer to fresh"
        assert started == [b"r0", b"fresh"] and backlog.waiting == 0  # r1-r3, given up, never signed
    finally:
        release.set()
        client.close()
        server.close()
        lane.stop()


async def _raw(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A serving process's connection as a broken or compromised one would use it: frames written by hand."""
    return await asyncio.open_unix_connection(path)


async def _answers(reader: asyncio.StreamReader, count: int) -> dict[int, list[Outcome]]:
    got: dict[int, list[Outcome]] = {}
    for _ in range(count):
        number, size = struct.unpack(">II", await asyncio.wait_for(reader.readexactly(8), 5))
        got.setdefault(number, []).append(outcome_of(await reader.readexactly(size)))
    return got


async def test_a_request_number_sent_twice_does_not_leak_a_backlog_place(tmp_path: Path) -> None:
    """A serving process (buggy, or not ours any more) sending two requests of one number while the first is being
    signed: each is answered, and both give their place in the backlog back. Were the place kept by number, the
    first's would never be given back (nor the request cancelled at its deadline): ``Backlog.cap`` such frames,
    from any serving process, would leave every live request of every serving process tryLater for good."""
    release = threading.Event()

    def sign(received: bytes) -> Outcome:
        release.wait(10)
        return Outcome(b"signed", "successful", "live", 1, 2, b"\x01")

    lane = LiveLane(sign, threads=1, cap=4)  # type: ignore[arg-type]
    lane.start(asyncio.get_running_loop())
    backlog = lane.backlog
    path = str(tmp_path / "live.sock")
    server = await asyncio.get_running_loop().create_unix_server(
        lambda: LiveServer(lambda r, d: lane.submit(r, "workers", d), backlog, timeout=5), path)  # type: ignore[arg-type]
    try:
        reader, writer = await _raw(path)
        for _ in range(2):
            writer.write(struct.pack(">IIBQ", 7, 1, 0, time.monotonic_ns()) + b"x")
        await writer.drain()
        for _ in range(50):
            if backlog.waiting == 2:
                break
            await asyncio.sleep(0.01)
        assert backlog.waiting == 2
        release.set()
        assert [a.status for a in (await _answers(reader, 2))[7]] == ["successful"] * 2
        assert backlog.waiting == 0
        writer.close()
    finally:
        release.set()
        server.close()
        lane.stop()


async def test_a_request_stamped_in_the_future_does_not_keep_the_others_from_their_deadline(tmp_path: Path) -> None:
    """Every process reads one CLOCK_MONOTONIC: a send time ahead of the main process's clock is a broken serving
    process. Such a request must still be given up ``timeout`` after it was read, and must not hold back the
    deadline of those sent after it on the connection (they would be signed for nobody, long after)."""
    async def never(received: bytes | str | Request, deadline: float = 0.0) -> Outcome:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    path = str(tmp_path / "live.sock")
    backlog = Backlog(cap=4)
    server = await asyncio.get_running_loop().create_unix_server(lambda: LiveServer(never, backlog, 0.3), path)
    try:
        reader, writer = await _raw(path)
        writer.write(struct.pack(">IIBQ", 1, 1, 0, 2 ** 64 - 1) + b"x")
        writer.write(struct.pack(">IIBQ", 2, 1, 0, time.monotonic_ns()) + b"y")
        answers = await _answers(reader, 2)
        assert {n: [a.status for a in got] for n, got in answers.items()} == {1: ["tryLater"], 2: ["tryLater"]}
        assert backlog.expired["workers"] == 2
        writer.close()
    finally:
        server.close()


async def test_a_serving_process_that_reads_no_answers_cannot_fill_the_main_process_memory(tmp_path: Path) -> None:
    """Requests answered at once (past their deadline, the backlog full: tryLater without the signer) are not in
    flight, so the bound on those never pauses reading; a serving process (broken, or not ours any more) that sends
    them without reading its answers must not pile answers up in the main process without end: its requests are
    no longer read while its answers wait unsent."""
    servers: list[LiveServer] = []

    def made() -> LiveServer:
        servers.append(LiveServer(_answer, timeout=5))
        return servers[-1]

    path = str(tmp_path / "live.sock")
    server = await asyncio.get_running_loop().create_unix_server(made, path)
    try:
        _, writer = await _raw(path)
        expired = struct.pack(">IIBQ", 1, 1, 0, 0) + b"x"  # sent at the clock's start: given up long ago
        for _ in range(40):
            writer.write(expired * 10_000)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        transport = servers[0].transport
        assert transport is not None and transport.get_write_buffer_size() < 4 * 1024 * 1024
        writer.transport.abort()
    finally:
        server.close()


async def test_a_signing_thread_takes_up_no_request_past_its_serving_process_deadline(tmp_path: Path) -> None:
    """A serving process gives its request up ``timeout`` after it sent it; the main process's loop, held up (a
    signer keeping the GIL, a busy process), cannot cancel it then. The signing thread must not sign it past that
    deadline either: the lane's own (``timeout`` after ``submit``) comes later by however long the request took
    to be read, up to ``timeout`` more for one read late."""
    started: list[bytes] = []

    def sign(received: bytes) -> Outcome:
        started.append(received)
        if received == b"first":
            time.sleep(0.5)  # holds the only thread past the serving process's deadline of the one behind
        return Outcome(b"answer to " + received, "successful", "live", 1, 2, b"\x01")

    loop = asyncio.get_running_loop()
    lane = LiveLane(sign, threads=1, timeout=1.0)  # type: ignore[arg-type]
    lane.start(loop)
    path = str(tmp_path / "live.sock")
    server = await loop.create_unix_server(
        lambda: LiveServer(lambda r, *d: lane.submit(r, "workers", *d), lane.backlog, timeout=1.0),  # type: ignore
        path)
    try:
        reader, writer = await _raw(path)
        writer.write(struct.pack(">IIBQ", 1, 5, 0, time.monotonic_ns()) + b"first")
        # read 0.8 s after it was sent (the main process behind): its serving process gives it up 0.2 s from now
        writer.write(struct.pack(">IIBQ", 2, 4, 0, time.monotonic_ns() - 800_000_000) + b"late")
        await writer.drain()
        for _ in range(100):
            if lane.backlog.waiting == 2:
                break
            await asyncio.sleep(0.005)
        assert lane.backlog.waiting == 2
        time.sleep(0.8)  # the loop held up past that deadline: its timer cannot cancel it
        answers = await _answers(reader, 2)
        assert answers[1][0].status == "successful" and answers[2][0].status == "tryLater"
        assert started == [b"first"] and lane.backlog.expired["workers"] == 1 and lane.backlog.waiting == 0
        writer.close()
    finally:
        server.close()
        lane.stop()
