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

from ocsp.lookup import Outcome

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


class LiveServer(asyncio.Protocol):
    """The main process's side of one connection: each request answered by ``answer`` as soon as it is
    signed (answers may leave in another order than the requests came: each carries its number)."""

    def __init__(self, answer: Callable[[bytes | str], Awaitable[Outcome]]) -> None:
        self.answer = answer
        self.buffer = bytearray()
        self.in_flight = 0
        self.paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        buffer = self.buffer
        at = 0
        while len(buffer) - at >= _ASK.size:
            number, size, kind = _ASK.unpack_from(buffer, at)
            if size > MAX_FRAME or kind >= len(KINDS):
                log.warning("serving process sent a malformed live request: connection dropped")
                assert self.transport is not None
                self.transport.abort()
                return
            end = at + _ASK.size + size
            if len(buffer) < end:
                break
            payload = bytes(buffer[at + _ASK.size:end])
            at = end
            received: bytes | str = payload.decode("utf-8", "surrogateescape") if kind == 1 else payload
            self.in_flight += 1
            task = asyncio.ensure_future(self.answer(received))
            task.add_done_callback(lambda done, n=number: self._send(n, done))
        del buffer[:at]
        if self.in_flight >= MAX_IN_FLIGHT and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _send(self, number: int, done: asyncio.Future[Outcome]) -> None:
        self.in_flight -= 1
        if self.transport is None or self.transport.is_closing():
            return
        if done.cancelled():
            return
        exc = done.exception()
        if exc is not None:  # answer_uncounted answers internalError itself: this is not expected
            log.error("live OCSP answer failed: %r", exc)
            self.transport.abort()
            return
        payload = live_payload(done.result())
        self.transport.write(_ANSWER.pack(number, len(payload)) + payload)
        if self.paused and self.in_flight < MAX_IN_FLIGHT // 2:
            self.paused = False
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class LiveClient:
    """The serving process's side: one connection to ``path``, opened when first needed and again after a
    loss; ``ask`` sends a request and waits for its answer (at most ``timeout`` seconds)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path, self.timeout = path, timeout
        self._protocol: _ClientProtocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._number = 0

    async def ask(self, kind: str, data: bytes) -> Outcome:
        """The main process's answer; ConnectionError when it cannot be had (the caller answers tryLater)."""
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
            raise ConnectionError(f"no answer within {self.timeout:.0f} s") from None
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
        buffer = self.buffer
        at = 0
        while len(buffer) - at >= _ANSWER.size:
            number, size = _ANSWER.unpack_from(buffer, at)
            if size > MAX_FRAME:
                self.transport.abort()
                return
            end = at + _ANSWER.size + size
            if len(buffer) < end:
                break
            waiter = self.waiting.pop(number, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(bytes(buffer[at + _ANSWER.size:end]))
            at = end
        del buffer[:at]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for waiter in self.waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("the main process closed the connection"))
        self.waiting.clear()
