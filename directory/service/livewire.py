"""The serving processes' OCSP requests to sign, carried to the main process and their answers back.

A request no serving process holds an answer for (a nonce, several CertIDs, a miss) is signed by the main
process, the one with the HSM. Every such answer costs an HSM signature; what carries it must cost little
next to it. As HTTP (an aiohttp client in the serving process, an aiohttp application in the main one) the
hop cost about 0.4 ms of CPU per answer, two thirds of an RSA-2048 signature in SoftHSM2. Here it is one
frame each way on a unix socket kept open, several requests in flight on it at once:

- request: ``>IIB`` (request number, payload length, kind: 0 a POST body, 1 a GET path in UTF-8) + payload;
- answer: ``>II`` (the request's number, payload length) + ``live_payload`` (JSON metadata line, DER).

Both sides bound what they accept (``MAX_FRAME``) and drop the connection on anything else; the socket's
directory is the service user's alone (``WorkerPool``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import Awaitable, Callable

from ocsp import response as resp
from ocsp.lookup import Outcome, error_outcome

log = logging.getLogger(__name__)
_ASK = struct.Struct(">IIB")
_ANSWER = struct.Struct(">II")
MAX_FRAME = 64 * 1024  # a request is at most 10 KiB (MAX_BODY), an answer a few KiB
MAX_IN_FLIGHT = 1024  # per connection, on the main process's side: past it, reading pauses
KINDS = ("post", "get")


def live_payload(outcome: Outcome) -> bytes:
    """An answer as it crosses: one JSON line of metadata, then the DER."""
    meta = {"status": outcome.status, "path": outcome.path, "this_update": outcome.this_update,
            "next_update": outcome.next_update, "etag": outcome.etag}
    return json.dumps(meta).encode() + b"\n" + outcome.body


def outcome_of(payload: bytes) -> Outcome:
    head, _, body = payload.partition(b"\n")
    meta = json.loads(head)
    outcome = Outcome(body, meta["status"], meta["path"], meta["this_update"], meta["next_update"])
    outcome.etag = meta["etag"]
    return outcome


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


class LiveServer(asyncio.Protocol):
    """The main process's side of one connection: each request answered by ``answer`` as soon as it is
    signed (answers may leave in another order than the requests came: each carries its number). A request
    whose answer fails gets ``internalError``, the others are not touched; what is still being signed when the
    connection goes is cancelled (nobody would read it)."""

    def __init__(self, answer: Callable[[bytes | str], Awaitable[Outcome]]) -> None:
        self.answer = answer
        self.buffer = bytearray()
        self.tasks: set[asyncio.Future[Outcome]] = set()
        self.paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        frames = take_frames(self.buffer, _ASK)
        if frames is None or any(kind >= len(KINDS) for (_, _, kind), _ in frames):
            log.warning("serving process sent a malformed live request: connection dropped")
            assert self.transport is not None
            self.transport.abort()
            return
        for (number, _, kind), payload in frames:
            received: bytes | str = payload.decode("utf-8", "surrogateescape") if kind == 1 else payload
            task = asyncio.ensure_future(self.answer(received))
            self.tasks.add(task)
            task.add_done_callback(lambda done, n=number: self._send(n, done))
        if len(self.tasks) >= MAX_IN_FLIGHT and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _send(self, number: int, done: asyncio.Future[Outcome]) -> None:
        self.tasks.discard(done)
        if self.transport is None or self.transport.is_closing() or done.cancelled():
            return
        exc = done.exception()
        if exc is not None:  # answer_uncounted answers internalError itself: this is not expected
            log.error("live OCSP answer failed: %r", exc)
            payload = live_payload(error_outcome(resp.INTERNAL_ERROR))
        else:
            payload = live_payload(done.result())
            if len(payload) > MAX_FRAME:  # the serving process would drop the connection, every request with it
                log.error("live OCSP answer of %d bytes not sent (more than %d)", len(payload), MAX_FRAME)
                payload = live_payload(error_outcome(resp.INTERNAL_ERROR))
        self.transport.write(_ANSWER.pack(number, len(payload)) + payload)
        if self.paused and len(self.tasks) < MAX_IN_FLIGHT // 2:
            self.paused = False
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
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

    async def ask(self, kind: str, data: bytes) -> Outcome:
        """The main process's answer. ConnectionError: the connection could not be had or was lost (worth one
        more try, on a new one); TimeoutError: no answer in time (the signer is stuck or overloaded: the caller
        answers tryLater rather than ask again)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        self._number = number = (self._number + 1) & 0xFFFFFFFF
        waiter = asyncio.get_running_loop().create_future()
        protocol.waiting[number] = waiter
        protocol.transport.write(_ASK.pack(number, len(data), KINDS.index(kind)) + data)
        try:
            payload = await asyncio.wait_for(waiter, self.timeout)
        except TimeoutError:
            raise TimeoutError(f"no answer within {self.timeout:.0f} s") from None
        finally:
            protocol.waiting.pop(number, None)
        return outcome_of(payload)

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
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.lost = False
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        frames = take_frames(self.buffer, _ANSWER)
        if frames is None:
            self.transport.abort()
            return
        for (number, _), payload in frames:
            waiter = self.waiting.pop(number, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for waiter in self.waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("the main process closed the connection"))
        self.waiting.clear()
