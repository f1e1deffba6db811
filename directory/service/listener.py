"""Listeners: aiohttp's request handler behind a cap on open connections and a deadline per request.

aiohttp closes a connection idle between requests (``idle_timeout``) and refuses over-long request lines
and header fields (400/431). It does not bound how many connections are open, nor how long one request
may take to arrive: a client dripping one byte now and then (headers or an announced body) kept its
connection forever. Here each listener has:

- a cap: past ``cap`` open connections a new one gets a minimal ``503`` with ``Retry-After`` and is closed
  before any parsing (at once on a TLS listener, and at once when more than ``LINGER`` refusals are still
  being read: a flood of refusals cannot hold descriptors either; a connection handed over too late to
  serve, ``handover.Adopter``, gets its 503 written before that close: its request was read, nobody else
  answers it);
- a deadline per request, from its first byte (from the TCP connection on a TLS listener: the handshake
  counts) to the last byte of its body; bytes arriving do not extend it. Past it the connection is
  aborted. The ``request_deadline`` middleware marks where a request's body ends (and the handler,
  whose time is not the client's, begins);
- a bound on clients that do not read: once more is unsent than the transport's high-water mark (writing
  paused), a connection of which the client then takes nothing for ``request_timeout`` is aborted. aiohttp
  would wait for it forever, its handler in ``drain()`` (pipelined requests get there at once). Not on the
  internal listener (``cut_stalled_readers``): a serving process reads from it only as fast as its own
  client reads, in 64 KiB steps.

A plain listener may also answer requests itself before aiohttp sees them (``ConnectionGate.direct``: OCSP
requests, held answers and live ones, ``ocsp/direct.py``). Such a connection is the gate's own until a read
holds anything that is not answered there: from that byte on, the connection is aiohttp's for good (its
parser then starts at a request boundary, and the answers keep their order). While answers are being signed
the rest of the read waits, reading paused, until they are all written; only then is it answered here or
handed over. While the gate holds a connection, it closes it when idle for ``idle_timeout`` (never while
answers are in flight), as aiohttp would, and at shutdown once its answers in flight are written.

TLS is started by the gate itself (``loop.start_tls``) after the connection is admitted, so connections
stuck in a handshake count against the cap too.

The listening sockets themselves are set up in ``directory/service/sockets.py``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.typedefs import Handler

from directory.service.transit import Transit

if TYPE_CHECKING:
    from directory.service.handover import Passer
    from ocsp.direct import Answers, DirectAnswers

log = logging.getLogger(__name__)
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
           b"Connection: close\r\n\r\n")
EARLY_LIMIT = 1 << 20  # bytes held between a TLS handshake's end and aiohttp taking the connection
LINGER = 32  # refused connections kept open (1 s) so the client reads its 503; beyond that, closed at once
HELD_GRACE = 5.0  # seconds at shutdown for the answers being signed on connections ``direct`` holds


@dataclass
class ConnectionGate:
    """One listener's limits and counters."""

    cap: int
    request_timeout: float = 10.0
    tls: ssl.SSLContext | None = None
    name: str = "public"
    idle_timeout: float = 15.0  # a connection answered by ``direct`` alone, closed when idle this long
    # answers the whole requests at the start of a read, returns the bytes they took (plain listeners only)
    direct: DirectAnswers | None = None
    # abort a client that reads nothing of what waits for it (writing paused) for ``request_timeout``; off for
    # the internal listener, whose clients, the serving processes, stop reading while their own client is slow
    cut_stalled_readers: bool = True
    # a serving process's: a connection about to need a live answer is offered to the main process
    # (``directory/service/handover.py``)
    handover: Passer | None = None
    open: int = 0
    refused: int = 0
    lingering: int = 0
    timed_out: int = 0
    stalled: int = 0  # connections aborted because the client read nothing of its answers
    handed_over: int = 0  # connections the main process took (``handover``)
    # offered, and closed here without the main process's answer (none in time, its socket lost): it may serve them
    handover_unanswered: int = 0
    held: set[_Gated] = field(default_factory=set)  # connections ``direct`` answers: aiohttp does not know them
    stopping: bool = False  # ``close_held`` was called

    def close_held(self) -> None:
        """At shutdown, after the listener stopped accepting: what aiohttp's cleanup does for its connections
        (none of these is in the middle of receiving a request: ``direct`` takes whole requests only); one
        with answers being signed is closed once they are written (``wait_held``). One offered to the main
        process waits for its answer (``Transit.answered``): its request is read, and nobody else would answer it
        if the main process refuses it."""
        self.stopping = True
        for gated in list(self.held):
            if gated.transit is not None and gated.transit.passing is not None:
                continue
            if gated.answers is not None and gated.transport is not None:
                gated.answers.close_when_written()

    async def wait_held(self, timeout: float) -> None:
        """Until every connection ``close_held`` left to finish its answers is closed; aborted past ``timeout``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.held and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for gated in list(self.held):
            if gated.transport is not None:
                gated.transport.abort()

    @property
    def descriptors(self) -> int:
        """The most file descriptors this listener can hold (admitted, plus refusals being read)."""
        return self.cap + LINGER


class _Gated(asyncio.Protocol):
    """Forwards to aiohttp's protocol, or answers whole requests itself first (``gate.direct``); turns connections
    away past the cap; enforces the request deadline, the idle one while it answers, and cuts off clients that
    read nothing of what waits for them."""

    def __init__(self, inner: Any, gate: ConnectionGate, carried: bytes = b"", late: bool = False) -> None:
        self.inner = inner
        self.gate = gate
        self.late = late  # a connection handed over too late to serve (``handover.Adopter``): refused as past the cap
        self.admitted = False
        self.started = False  # inner.connection_made was called (after the TLS handshake, with TLS)
        self.transport: asyncio.Transport | None = None
        # the current request's deadline (loop time; None between requests) and the one timer that checks it:
        # a request only moves ``deadline_at``, the timer (at most one, re-set when it fires early) does the rest
        self.deadline_at: float | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.in_handler = False
        self.closer: asyncio.TimerHandle | None = None
        self.stall: asyncio.TimerHandle | None = None  # set while writing is paused: the client must take some
        # TLS: application bytes can arrive with the handshake's last flight, before start_tls returns
        self.early: list[bytes] = []
        self.early_eof = False
        self.direct: Callable[[bytes, Answers], int] | None = None  # until aiohttp takes over
        self.answers: Answers | None = None  # this connection's answers from ``direct``, in request order
        self.waiting: bytes | None = None  # read while answers are in flight, not taken yet (reading paused)
        self.eof = False  # end of input seen while answers were in flight
        self.idle = False  # the deadline set is the idle one of a connection ``direct`` answers
        self.write_paused = False
        self.loop: asyncio.AbstractEventLoop | None = None  # set once connected: ``_idle`` runs once per read
        # a hand-over's bytes (``directory/service/transit.py``): carried in with a connection a serving process
        # handed over, or out while this process offers it to the main process; None once none is in transit
        self.transit: Transit | None = Transit(self, carried) if carried else None

    # -- admission --------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (asyncio's, or uvloop's, which does not subclass asyncio.Transport)
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        gate = self.gate
        if gate.open >= gate.cap or self.late:
            if not self.late:  # counted by the adopter (``late``), not as a refusal of this listener
                gate.refused += 1
            if gate.tls is not None or gate.lingering >= LINGER:
                if self.late:  # its serving process has let it go: nobody else answers it. Its request was read
                    transport.write(REFUSAL)  # there (nothing unread here to reset it, as a rule): the 503 is
                    transport.close()  # written, then the descriptor given back at once, not kept a second
                else:
                    transport.abort()
                return
            gate.lingering += 1
            transport.write(REFUSAL)
            # closed once the client has read it and hung up, or after a second: closing at once with the
            # request still unread would reset the connection before the client sees the 503
            self.closer = asyncio.get_running_loop().call_later(1.0, transport.close)
            return
        self.admitted = True
        gate.open += 1
        if gate.tls is None:
            if gate.direct is not None:
                self.direct = gate.direct.answer
                self.answers = gate.direct.connection(transport, self._drained, gate.request_timeout)
                self.answers.hand_over = gate.handover is not None
                gate.held.add(self)
                self._idle()
            else:
                self.started = True
                self.inner.connection_made(transport)
            if self.transit is not None:  # before anything read here, once reading is on (``Transit.take``)
                self.loop.call_soon(self.transit.take)
        else:
            self.arm()
            asyncio.get_running_loop().create_task(self._start_tls(transport, gate.tls))

    async def _start_tls(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            secured = await loop.start_tls(transport, self, context, server_side=True,
                                           ssl_handshake_timeout=self.gate.request_timeout)
        except Exception as exc:  # a failed or abandoned handshake: start_tls closed the connection
            log.debug("%s listener: TLS handshake failed: %s", self.gate.name, exc)
            secured = None
        if secured is None or secured.is_closing():
            # asyncio does not tell the application protocol of a connection lost mid-handshake (and
            # start_tls may even return the closed transport): the slot is given back here
            self._release()
            return
        self.transport = secured
        self.started = True
        self.inner.connection_made(secured)
        early, self.early = self.early, []
        for data in early:
            self.data_received(data)
        if self.early_eof:
            self.inner.eof_received()

    # -- the deadline -----------------------------------------------------------------------------
    def arm(self) -> None:
        if self.deadline_at is None:
            loop = asyncio.get_running_loop()
            self.deadline_at = loop.time() + self.gate.request_timeout
            if self.deadline is None:
                self.deadline = loop.call_at(self.deadline_at, self._expire)

    def _idle(self) -> None:
        """A connection ``direct`` answers, between two reads: closed after ``idle_timeout`` of silence."""
        loop = self.loop
        assert loop is not None
        self.idle = True
        self.deadline_at = loop.time() + self.gate.idle_timeout
        if self.deadline is None:
            self.deadline = loop.call_at(self.deadline_at, self._expire)

    def disarm(self) -> None:
        """No deadline now; a timer still set wakes once, finds none, and goes (no timer made per request)."""
        self.deadline_at = None

    def _stop_timer(self) -> None:
        self.deadline_at = None
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expire(self) -> None:
        self.deadline = None
        if self.deadline_at is None:
            return
        loop = asyncio.get_running_loop()
        if self.deadline_at > loop.time():  # a later request's deadline: wake again then
            self.deadline = loop.call_at(self.deadline_at, self._expire)
            return
        self.deadline_at = None
        if self.idle:  # kept alive and unused: closed as aiohttp closes its idle connections
            if self.answers is not None and self.answers.pending:
                # not idle: looked at again later. Not left to ``_drained`` alone: a connection closing once its
                # answers are written (end of input, Connection: close) is closed without it, and a client
                # that reads nothing would then hold it, its close waiting on unsent bytes, for good
                self._idle()
                return
            if self.transport is not None:
                # answers still unsent after idle_timeout of silence: a client that does not read, which a
                # graceful close would wait for forever (its slot with it)
                if self.transport.get_write_buffer_size():
                    self.gate.stalled += 1
                    self.transport.abort()
                else:
                    self.transport.close()
            return
        self.gate.timed_out += 1
        log.debug("%s listener: request not received within %.0f s, connection closed", self.gate.name,
                  self.gate.request_timeout)
        if self.transport is not None:
            self.transport.abort()

    def body_complete(self) -> None:
        """The current request's last byte is in: its handler's time is ours, not the client's."""
        self.disarm()
        self.in_handler = True

    # -- forwarding -------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.transit is not None:  # read before the carried bytes were taken up: after them
            data = self.transit.before(data)
        if self.direct is not None:
            answers = self.answers
            assert answers is not None
            if self.waiting is not None:  # reading is paused: at most what was already on its way
                self.waiting += data
                return
            used = self.direct(data, answers)
            if used == len(data):
                if not answers.pending:
                    self._idle()
                return
            if answers.pending:  # the rest waits for the answers in flight (order), or for room among them
                self.waiting = data[used:]
                if self.transport is not None:
                    self.transport.pause_reading()
                return
            if answers.live_next:  # a live answer next, nothing in flight: offered to the main process, once
                answers.live_next = answers.hand_over = False
                Transit.offer(self, data[used:])
                return
            self._hand_over()
            if used:
                data = data[used:]
        if not self.started:
            if self.admitted:
                self.early.append(data)
                if sum(map(len, self.early)) > EARLY_LIMIT and self.transport is not None:
                    self.transport.abort()
            return
        if not self.in_handler:
            self.arm()  # the first byte of a request starts its clock; later bytes do not move it
        self.inner.data_received(data)

    def _drained(self) -> None:
        """Every answer in flight is written: what waited is taken up (here, or by aiohttp), else idle again.

        Reading resumes before what waited is taken up, not after: taking it up may pause reading again, ours
        (more answers in flight) or aiohttp's own flow control (pipelined requests past its queue, a body its
        handler does not read yet). Resumed after, that pause was undone while aiohttp still counted on it,
        and its parser kept buffering whatever the client sent, without bound."""
        if self.transport is None or self.transport.is_closing():
            return
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            self.transport.resume_reading()  # nothing is read before this callback returns
            self.data_received(waiting)
        elif self.direct is not None:
            self._idle()
        if self.eof and self.waiting is None:
            self.eof = False
            self.eof_received()

    def _hand_over(self) -> None:
        """From now on aiohttp has the connection (``direct`` took whole requests only: its parser starts at a
        request's first byte); the request's own deadline replaces the idle one."""
        self.direct = None
        self.gate.held.discard(self)
        self.idle = False
        self._stop_timer()  # set for the idle deadline, maybe later than the request's
        self.started = True
        self.inner.connection_made(self.transport)
        if self.write_paused:
            self.inner.pause_writing()

    def eof_received(self) -> bool | None:
        transit = self.transit
        if transit is not None:
            if transit.carried is not None:  # the carried bytes first
                transit.take()
            if transit.passing is not None:  # not read while offered; an end of input seen anyway waits with it
                return True
        if self.waiting is not None:  # taken up once the answers in flight are written (``_drained``)
            self.eof = True
            return True
        if self.answers is not None and self.direct is not None:  # closed once its answers are written
            self.answers.close_when_written()
            return True
        if not self.admitted or self.direct is not None:  # refused: nothing pending
            if self.transport is not None:
                self.transport.close()
            return None
        if not self.started:
            self.early_eof = True
            return True  # keep the connection open until aiohttp has seen the early bytes
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.stall is None and self.transport is not None and self.gate.cut_stalled_readers:
            self._watch_writes(self.transport.get_write_buffer_size())
        if self.started:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None
        if self.started:
            self.inner.resume_writing()

    def _watch_writes(self, unsent: int) -> None:
        self.stall = asyncio.get_running_loop().call_later(self.gate.request_timeout, self._writes_stalled, unsent)

    def _writes_stalled(self, unsent: int) -> None:
        """Writing still paused ``request_timeout`` after ``unsent`` bytes waited: aborted if the client took
        none of them (a slow reader that takes some is watched again)."""
        self.stall = None
        transport = self.transport
        if not self.write_paused or transport is None:
            return
        now = transport.get_write_buffer_size()
        if now < unsent:
            self._watch_writes(now)
            return
        log.debug("%s listener: client read nothing for %.0f s, connection aborted", self.gate.name,
                  self.gate.request_timeout)
        self.gate.stalled += 1
        transport.abort()

    def _release(self) -> None:
        """Give the connection's slot back (once, whichever of the TLS failure or the loss comes first)."""
        self._stop_timer()
        if self.admitted:
            self.admitted = False
            self.gate.open -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.direct is not None:
            self.gate.held.discard(self)
        if self.answers is not None:
            self.answers.abandon()
        self.waiting = None
        if self.admitted:
            self._release()
            if self.started:
                self.inner.connection_lost(exc)
        elif self.closer is not None:
            self.closer.cancel()
            self.closer = None
            self.gate.lingering -= 1
        self._stop_timer()
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None


@web.middleware
async def request_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tell the gate where a request's body ends; the deadline covers everything up to there (the admin
    listener's middleware; the public listener calls it from ``app.fronted``)."""
    transport = request.transport
    gated = transport.get_protocol() if transport is not None else None
    if not isinstance(gated, _Gated):
        return await handler(request)
    gated.arm()  # a pipelined request parsed while the previous one was handled starts its clock now
    request.content.on_eof(gated.body_complete)
    try:
        return await handler(request)
    except ConnectionError:
        # cut off mid-body (deadline, or the client): a 408 for aiohttp's bookkeeping, nobody is there to read
        # it. The gate's transport, not the request's: aiohttp forgets the latter once the connection is lost.
        if gated.transport is not None and gated.transport.is_closing():
            return web.Response(status=408)
        raise
    finally:
        gated.in_handler = False
