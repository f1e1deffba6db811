"""The serving processes' OCSP requests to sign, carried to the main process and their answers back.

A request no serving process holds an answer for (a nonce, several CertIDs, a miss) is signed by the main
process, the one with the HSM. Every such answer costs an HSM signature; what carries it must cost little
next to it. As HTTP (an aiohttp client in the serving process, an aiohttp application in the main one) the
hop cost about 0.4 ms of CPU per answer, two thirds of an RSA-2048 signature in SoftHSM2. Here it is one
frame each way on a unix socket kept open, several requests in flight on it at once:

- request: ``>IIBQ`` (request number, payload length, kind: 0 a POST body, 1 a GET path in UTF-8, 2 a request
  the serving process parsed already, ``pack_request``; when it was sent, CLOCK_MONOTONIC in ns: one clock for
  every process of the host) + payload;
- answer: ``>II`` (the request's number, payload length) + ``live_payload`` (fixed-size metadata, DER).

A serving process sends what it parsed (kind 2: the values of the request, never its bytes; issue 15 §3: a
second strict parse cost the signer's process ~15 µs per answer, JSON metadata ~10 µs more). The values are
checked on arrival as the parser checks them (sizes, hash algorithm, serial, nonce). Both sides bound what
they accept (``MAX_FRAME``) and drop the connection on anything else; the socket's directory is the service
user's alone (``WorkerPool``). A serving process waits ``timeout`` at most for an answer: one timer per
connection looks at what waits, not one per request. Frames made in one turn of the event loop leave in one
write (``_Outbox``): the answers one wake-up of the signing lane hands over, the requests of the clients one
poll of the sockets found (a send and a wake-up of the other side each, not one per frame).

The main process's side has deadlines of its own: a serving process gives a request up ``timeout`` after
sending it (tryLater to its client), so the main process does not sign it past that either. A request already
that old when read is answered tryLater at once; one still waiting to be signed then is cancelled (a signing
thread not at it yet skips it, ``ocsp.live``) and answered tryLater: a main process behind on its work does not
spend the HSM on answers nobody waits for, which a flood of nonces would otherwise pile up. Each is counted as
expired (source ``workers``) in the signing lane's ``Backlog``, which also bounds what waits to be signed: one
bound for the process, shared by every serving process's connection and the main process's own (past it,
tryLater at once, path ``shed``: ``LiveLane.submit``).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable

from directory.der import DIGESTS
from ocsp import response as resp
from ocsp.live import Backlog
from ocsp.lookup import Outcome, error_outcome
from ocsp.request import MAX_NONCE, MAX_SERIAL_OCTETS, CertId, Request

log = logging.getLogger(__name__)
_ASK = struct.Struct(">IIBQ")
_ANSWER = struct.Struct(">II")
MAX_FRAME = 64 * 1024  # a request is at most 10 KiB (MAX_BODY), an answer a few KiB
MAX_IN_FLIGHT = 1024  # per connection, on the main process's side: past it, reading pauses
KINDS = ("post", "get", "request")
MAX_CERT_IDS = 100  # what the serving processes' parser lets through (``from_cache``)
_HASHES = tuple(DIGESTS)  # CertID hash algorithms by index
_META = struct.Struct(">qqBBB")  # thisUpdate, nextUpdate (-1: none), then the lengths of status, path, ETag
_NONE = -1


def live_payload(outcome: Outcome) -> bytes:
    """An answer as it crosses: thisUpdate, nextUpdate, status, path and ETag, then the DER."""
    status, path, etag = outcome.status.encode(), outcome.path.encode(), outcome.etag.encode()
    this_update = _NONE if outcome.this_update is None else outcome.this_update
    next_update = _NONE if outcome.next_update is None else outcome.next_update
    return b"".join((_META.pack(this_update, next_update, len(status), len(path), len(etag)), status, path, etag,
                     outcome.body))


def outcome_of(payload: bytes) -> Outcome:
    this_update, next_update, n_status, n_path, n_etag = _META.unpack_from(payload)
    at = _META.size
    status, path = payload[at:at + n_status].decode(), payload[at + n_status:at + n_status + n_path].decode()
    at += n_status + n_path
    outcome = Outcome(payload[at + n_etag:], status, path, None if this_update == _NONE else this_update,
                      None if next_update == _NONE else next_update)
    outcome.etag = payload[at:at + n_etag].decode()
    return outcome


def pack_request(request: Request) -> bytes:
    """A parsed request's values: nonce (length, 0: none), CertID count, each CertID (hash algorithm index, the
    two hashes, serial length and octets)."""
    nonce = request.nonce or b""
    parts = [bytes((len(nonce),)), nonce, bytes((len(request.cert_ids),))]
    for cid in request.cert_ids:
        serial = cid.serial.to_bytes((cid.serial.bit_length() + 7) // 8 or 1, "big")
        parts += (bytes((_HASHES.index(cid.hash_name),)), cid.name_hash, cid.key_hash, bytes((len(serial),)), serial)
    return b"".join(parts)


def unpack_request(data: bytes) -> Request:
    """``pack_request``'s inverse; ValueError for anything the parser would not have let through."""
    try:
        n = data[0]
        if n > MAX_NONCE:
            raise ValueError(f"nonce of {n} octets")
        nonce, at = (data[1:1 + n] if n else None), 1 + n
        count, at = data[at], at + 1
        if not 1 <= count <= MAX_CERT_IDS:
            raise ValueError(f"{count} CertIDs")
        cert_ids = []
        for _ in range(count):
            digest = DIGESTS[_HASHES[data[at]]]
            name_hash, key_hash = data[at + 1:at + 1 + digest.size], data[at + 1 + digest.size:at + 1 + 2 * digest.size]
            at += 1 + 2 * digest.size
            size = data[at]
            if not 1 <= size <= MAX_SERIAL_OCTETS + 1 or at + 1 + size > len(data):
                raise ValueError(f"serial of {size} octets")
            serial = int.from_bytes(data[at + 1:at + 1 + size], "big")
            if serial.bit_length() > 8 * MAX_SERIAL_OCTETS:
                raise ValueError("serial too long")
            at += 1 + size
            cert_ids.append(CertId(digest.name, name_hash, key_hash, serial))
    except IndexError:
        raise ValueError("truncated request") from None
    if at != len(data) or (nonce is not None and len(nonce) != n):
        raise ValueError("request of the wrong length")
    return Request(tuple(cert_ids), nonce)


def take_frames(buffer: bytearray, header: struct.Struct) -> list[tuple[tuple[int, ...], bytes]] | None:
    """The whole frames at the start of ``buffer`` (removed from it): (header fields, payload) each, the payload
    length being the header's second field; None when one announces more than ``MAX_FRAME`` (the peer is
    broken: its connection is dropped)."""
    frames = []
    at = 0
    while len(buffer) - at >= header.size:
        fields = header.unpack_from(buffer, at)
        if fields[1] > MAX_FRAME:
            return None
        end = at + header.size + fields[1]
        if len(buffer) < end:
            break
        frames.append((fields, bytes(buffer[at + header.size:end])))
        at = end
    del buffer[:at]
    return frames


class _Outbox:
    """Frames for one transport, written together at the end of the event loop's current turn."""

    __slots__ = ("frames", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        if not self.frames:
            asyncio.get_running_loop().call_soon(self._flush)
        self.frames.append(frame)

    def _flush(self) -> None:
        frames, self.frames = self.frames, []
        if not self.transport.is_closing():
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))


class LiveServer(asyncio.Protocol):
    """The main process's side of one connection: each request answered by ``answer`` as soon as it is
    signed (answers may leave in another order than the requests came: each carries its number). A request
    whose answer fails gets ``internalError``, the others are not touched; what is still being signed when the
    connection goes is cancelled (nobody would read it), and so is what is still being signed at its deadline,
    ``timeout`` after it was sent (then answered tryLater, counted in ``backlog.expired``). How many may wait to
    be signed is ``answer``'s to bound (``LiveLane.submit``: a future done at once past it, the lane's
    ``backlog`` full); with it full already, a request is refused here before it is even unpacked."""

    def __init__(self, answer: Callable[[bytes | str | Request, float], Awaitable[Outcome]],
                 backlog: Backlog | None = None, timeout: float = 30.0) -> None:
        self.answer = answer
        self.backlog = backlog if backlog is not None else Backlog()
        self.timeout_ns = int(timeout * 1e9)
        self.buffer = bytearray()
        self.tasks: set[asyncio.Future[Outcome]] = set()
        # those still to be signed, with their deadline (CLOCK_MONOTONIC ns), oldest first; keyed by the future,
        # not the request's number: a serving process that sends one number twice (a bug) would otherwise keep
        # the first out of the deadline sweep, signed for nobody
        self.signing: dict[asyncio.Future[Outcome], int] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self.paused = False  # too many in flight: reading paused until half of them are answered
        self.backed_up = False  # answers waiting unsent (the serving process not reading them): reading paused too
        self.transport: asyncio.Transport | None = None
        self.outbox: _Outbox | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.outbox = _Outbox(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        frames = take_frames(self.buffer, _ASK)
        if frames is None or any(kind >= len(KINDS) for (_, _, kind, _), _ in frames):
            log.warning("serving process sent a malformed live request: connection dropped")
            assert self.transport is not None
            self.transport.abort()
            return
        backlog, now = self.backlog, time.monotonic_ns()
        for (number, _, kind, sent), payload in frames:
            # one clock for every process of the host: a send time ahead of it is a broken serving process's,
            # taken as now (else never given up, and the deadline sweep, oldest first, stuck behind it)
            deadline = min(sent, now) + self.timeout_ns
            if deadline <= now:  # its serving process has given it up: nobody waits for a signature
                backlog.expired["workers"] += 1
                self._refuse(number, "error")
                continue
            if backlog.waiting >= backlog.cap:  # as ``LiveLane.submit`` would answer, without unpacking it first
                backlog.full["workers"] += 1
                self._refuse(number, "shed")
                continue
            received: bytes | str | Request
            if kind == 2:
                try:
                    received = unpack_request(payload)
                except ValueError as exc:
                    log.error("serving process sent a request that does not unpack: %s", exc)
                    failed: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
                    failed.set_result(error_outcome(resp.INTERNAL_ERROR))
                    self._send(number, failed)
                    continue
            else:
                received = payload.decode("utf-8", "surrogateescape") if kind == 1 else payload
            # its deadline goes with it: a signing thread takes it up no later (the loop, held up, may not cancel it)
            task = asyncio.ensure_future(self.answer(received, deadline / 1e9))  # a future is taken as it is
            self.tasks.add(task)
            if not task.done():  # to be signed (a place in the lane's backlog): given up at its deadline
                self.signing[task] = deadline
                if self._sweep is None:
                    self._sweep = asyncio.get_running_loop().call_later((deadline - now) / 1e9, self._expire)
            task.add_done_callback(lambda done, n=number: self._send(n, done))
        if len(self.tasks) >= MAX_IN_FLIGHT and not self.paused and self.transport is not None:
            self.paused = True
            if not self.backed_up:
                self.transport.pause_reading()

    def pause_writing(self) -> None:
        """Answers pile up unsent: no more requests read until they leave. Those answered at once (past their
        deadline, the backlog full) are never in flight, so ``MAX_IN_FLIGHT`` alone would not stop a serving process
        that sends them and reads nothing from filling this process's memory."""
        self.backed_up = True
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.backed_up = False
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _refuse(self, number: int, path: str) -> None:
        """tryLater for request ``number``, not asked of the signer."""
        assert self.outbox is not None
        payload = live_payload(error_outcome(resp.TRY_LATER, path))
        self.outbox.send(_ANSWER.pack(number, len(payload)) + payload)

    def _expire(self) -> None:
        """Cancel what is still being signed past its deadline (oldest first: requests come in the order they were
        sent); its answer is tryLater (``_send``)."""
        self._sweep = None
        now = time.monotonic_ns()
        late = []
        for task, deadline in self.signing.items():
            if deadline > now:
                self._sweep = asyncio.get_running_loop().call_later((deadline - now) / 1e9, self._expire)
                break
            late.append(task)
        for task in late:
            task.cancel()

    def _send(self, number: int, done: asyncio.Future[Outcome]) -> None:
        self.tasks.discard(done)
        self.signing.pop(done, None)
        if self.transport is None or self.transport.is_closing():
            return
        if done.cancelled():  # at its deadline (``_expire``): a connection lost has no transport
            self.backlog.expired["workers"] += 1
            self._refuse(number, "error")
            return
        exc = done.exception()
        if exc is not None:  # a failure of the signing itself (answer_future turns the others into answers)
            log.error("live OCSP answer failed: %r", exc)
            payload = live_payload(error_outcome(resp.INTERNAL_ERROR))
        else:
            payload = live_payload(done.result())
            if len(payload) > MAX_FRAME:  # the serving process would drop the connection, every request with it
                log.error("live OCSP answer of %d bytes not sent (more than %d)", len(payload), MAX_FRAME)
                payload = live_payload(error_outcome(resp.INTERNAL_ERROR))
        assert self.outbox is not None
        self.outbox.send(_ANSWER.pack(number, len(payload)) + payload)
        if self.paused and len(self.tasks) < MAX_IN_FLIGHT // 2:
            self.paused = False
            if not self.backed_up:
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()


class LiveClient:
    """The serving process's side: one connection to ``path``, opened when first needed and again after a
    loss; ``ask`` sends a request and waits for its answer (at most ``timeout`` seconds)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path, self.timeout = path, timeout
        self._protocol: _ClientProtocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._number = 0

    async def ask(self, kind: str, data: bytes | Request) -> Outcome:
        """The main process's answer to ``data`` (kind "request": a parsed ``Request``). ConnectionError: the
        connection could not be had or was lost (worth one more try, on a new one); TimeoutError: no answer in
        time (the signer is stuck or overloaded: the caller answers tryLater rather than ask again)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        try:
            return await self._send(protocol, kind, data)
        except TimeoutError:
            raise TimeoutError(f"no answer within {self.timeout:.0f} s") from None

    def submit(self, kind: str, data: bytes | Request) -> asyncio.Future[Outcome] | None:
        """``ask`` without a coroutine (no task per request), on the connection already open; None when there is
        none (``ask`` opens one). The future fails with ConnectionError or TimeoutError as ``ask`` does."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            return None
        return self._send(protocol, kind, data)

    def _send(self, protocol: _ClientProtocol, kind: str, data: bytes | Request) -> asyncio.Future[Outcome]:
        self._number = number = (self._number + 1) & 0xFFFFFFFF
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Outcome] = loop.create_future()
        protocol.wait(number, waiter, loop.time() + self.timeout)
        payload = pack_request(data) if isinstance(data, Request) else data
        protocol.outbox.send(_ASK.pack(number, len(payload), KINDS.index(kind), time.monotonic_ns()) + payload)
        return waiter

    async def _connect(self) -> _ClientProtocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one connection, whoever asks first opens it
            if self._protocol is None or self._protocol.lost:
                try:
                    _, self._protocol = await asyncio.get_running_loop().create_unix_connection(
                        _ClientProtocol, self.path)
                except OSError as exc:  # no main process listening (stopping, restarting)
                    raise ConnectionError(f"{self.path}: {exc.strerror or exc}") from exc
            return self._protocol

    def close(self) -> None:
        if self._protocol is not None and not self._protocol.lost:
            self._protocol.transport.close()


class _ClientProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiting: dict[int, asyncio.Future[Outcome]] = {}
        self.deadlines: dict[int, float] = {}
        self.lost = False
        self.transport: asyncio.Transport
        self.outbox: _Outbox
        self._sweep: asyncio.TimerHandle | None = None

    def wait(self, number: int, waiter: asyncio.Future[Outcome], deadline: float) -> None:
        """``waiter`` gets the answer numbered ``number``, or TimeoutError once ``deadline`` (loop time) passes:
        a timer a second (or sooner for short deadlines) looks at every waiter, none is made per request."""
        self.waiting[number] = waiter
        self.deadlines[number] = deadline
        if self._sweep is None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_at(min(deadline, loop.time() + 1.0), self._expire)

    def _expire(self) -> None:
        self._sweep = None
        loop = asyncio.get_running_loop()
        now, soonest = loop.time(), None
        for number, deadline in list(self.deadlines.items()):
            waiter = self.waiting.get(number)
            if waiter is None or waiter.done():  # answered, or cancelled by its caller
                del self.deadlines[number]
                self.waiting.pop(number, None)
            elif deadline <= now:
                del self.deadlines[number]
                del self.waiting[number]
                waiter.set_exception(TimeoutError())
            else:
                soonest = deadline if soonest is None else min(soonest, deadline)
        if soonest is not None:
            self._sweep = loop.call_at(min(soonest, now + 1.0), self._expire)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.outbox = _Outbox(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        frames = take_frames(self.buffer, _ANSWER)
        if frames is None:
            self.transport.abort()
            return
        deadlines = self.deadlines
        for (number, _), payload in frames:
            waiter = self.waiting.pop(number, None)
            deadlines.pop(number, None)
            if waiter is not None and not waiter.done():
                try:
                    waiter.set_result(outcome_of(payload))
                except (struct.error, UnicodeDecodeError) as exc:  # the main process's bug: this answer alone
                    waiter.set_exception(ValueError(f"answer {number} does not unpack: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.deadlines.clear()
        for waiter in self.waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("the main process closed the connection"))
        self.waiting.clear()
