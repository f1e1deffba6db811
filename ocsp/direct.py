"""OCSP requests answered straight from a connection's bytes, before aiohttp parses them.

A pre-signed answer should cost little more than a look-up and a write (issue 15). Through aiohttp it costs
about half again what a bare aiohttp handler costs (request object, routing, response object, header
building). RFC 5019 clients send small keep-alive requests, each arriving whole in one read: those are
answered here, from the very look-up the aiohttp handlers use (``from_cache``), with the same headers.

Only a strict subset of HTTP/1.1 is taken, every byte of it checked: ``POST /ocsp`` (or ``/ocsp/``) with one
``Content-Length`` and ``Content-Type: application/ocsp-request``, or ``GET /ocsp/{base64}``; CRLF line ends;
header names as tokens and values of visible ASCII; one ``Host``; no second of a field aiohttp takes once
(its parser's 400); no ``Transfer-Encoding``, ``Content-Encoding`` (aiohttp would inflate the body),
``Expect``, ``Upgrade``, ``Proxy-Connection`` (llhttp's ``Connection``), nor a ``Connection`` other than
``keep-alive`` or ``close`` (then answered and closed, what follows unread); the whole request, body included,
within the bytes received. A request so spelled means the same to any HTTP/1.1 parser, so none can read it
otherwise (no smuggling through the difference), and aiohttp would answer it, not refuse it. Anything else is
left to aiohttp from that request on: the caller then hands the rest of the connection to aiohttp for good,
so its parser starts at a request boundary and the answers keep their order.

A request in that subset whose answer is not held (a nonce, a miss: it needs the HSM) is signed live from
here too, without aiohttp (issue 15 §3: aiohttp's request and response and a second parse of the request cost
a sixth of an RSA signature's CPU). Its answer is a future (``OcspComponent.live_future``); the connection's
answers then wait in request order (``Answers``): one ready behind one being signed is written once the
earlier one is. At most ``MAX_PENDING`` answers of a connection are in flight; past that, and whenever
something not taken here follows answers in flight, the rest of the read waits (the caller pauses reading)
until every answer is written, and only then goes on, here or to aiohttp. A connection lost meanwhile cancels
what it still waits for; ``Connection: close`` or end of input closes it once its answers are written. An
answer not signed within the request deadline (``ConnectionGate.request_timeout``) is cancelled and answered
``tryLater`` in its turn: a stuck or swamped signer must not hold the connection, its slot and the answers
behind it forever (one timer per connection looks at the oldest answer being signed, none per request).

In a serving process (``[http] workers``) a live answer is signed by the main process: there, with
``Answers.hand_over``, the first one with nothing in flight before it stops the read (``live_next``) so that
the caller can hand the connection itself to the main process (``directory/service/handover.py``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from aiohttp.http import SERVER_SOFTWARE

from directory import logs
from directory.httpdate import http_date
from ocsp import response as resp
from ocsp.lookup import Outcome, error_outcome
from ocsp.request import MAX_BODY

if TYPE_CHECKING:
    from ocsp.http import OcspComponent

MAX_HEAD = 8190  # request line and header fields, as aiohttp's own line limit: longer ones are aiohttp's
MAX_FIELDS = 32
MAX_PENDING = 16  # answers of one connection in flight (being signed, or ready behind one that is)
WRITE_LIMIT = 64 * 1024  # answers queued unread by the client: past this, aiohttp's flow control takes over
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?[ \t]*")
_GET_TARGET = re.compile(rb"/ocsp/[A-Za-z0-9+/=%._~-]*")
# framing or body semantics aiohttp handles (chunks, 100-continue, protocol switch, decompressed bodies; llhttp
# reads Proxy-Connection as Connection), what it refuses (400: the old WebSocket handshake), and the fields of
# which its parser refuses a second (SINGLETON_HEADERS) that no OCSP client sends even once
_REFUSED_FIELDS = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"content-encoding", b"proxy-connection",
                             b"sec-websocket-key1", b"content-location", b"content-range", b"etag", b"max-forwards",
                             b"server"})
_SERVER = f"Server: {SERVER_SOFTWARE}\r\n".encode()
_KEEP, _CLOSE = b"\r\n", b"Connection: close\r\n\r\n"
log = logging.getLogger(__name__)


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class _Entry:
    """One request's answer in a connection's queue: ``outcome`` once known, ``future`` while being signed."""

    __slots__ = ("close", "future", "get", "outcome", "request_id", "started")

    def __init__(self, outcome: Outcome | None, future: asyncio.Future[Outcome] | None, get: bool,
                 request_id: str, close: bool, started: float) -> None:
        self.outcome, self.future, self.get = outcome, future, get
        self.request_id, self.close, self.started = request_id, close, started


class Answers:
    """One connection's answers in the order of its requests (made by ``DirectAnswers.connection``).

    ``drained`` is called each time the last answer in flight has been written (the gate then takes up what
    it held back); ``pending`` says whether any is in flight."""

    __slots__ = ("_direct", "closing", "drained", "gone", "hand_over", "live_next", "queue", "timeout", "timer",
                 "transport")

    def __init__(self, direct: DirectAnswers, transport: Writer, drained: Callable[[], None],
                 timeout: float) -> None:
        self._direct = direct
        self.transport = transport
        self.drained = drained
        self.timeout = timeout  # seconds an answer may be signed for, from its request's arrival
        self.timer: asyncio.TimerHandle | None = None  # set while answers are being signed (``watch``)
        self.queue: collections.deque[_Entry] = collections.deque()
        self.closing = False  # Connection: close, end of input or shutdown: closed once the queue is written
        self.gone = False
        # stop before a live answer when nothing is in flight (``live_next`` then says so): the caller may hand
        # the connection to the process that signs (``directory/service/handover.py``) rather than ask it
        self.hand_over = False
        self.live_next = False

    @property
    def pending(self) -> bool:
        return bool(self.queue)

    def close_when_written(self) -> None:
        """Close the connection once every answer in flight is written (at once when none is)."""
        self.closing = True
        if not self.queue:
            self.transport.close()

    def watch(self) -> None:
        """An answer is being signed: one timer (the connection's) will look at it once it is due."""
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.timeout, self._overdue)

    def _overdue(self) -> None:
        """Answers still being signed ``timeout`` after their request came are cancelled: ``tryLater`` in their
        turn (``DirectAnswers.finish``); a signing thread not yet at one skips it (``ocsp.live``). The timer is
        set again for the next one due (requests are queued in the order they came: the first still being
        signed is the next due)."""
        self.timer = None
        if self.gone:
            return
        now, late, due = time.perf_counter(), [], None
        for entry in self.queue:
            future = entry.future
            if future is None or future.done():
                continue
            left = entry.started + self.timeout - now
            if left > 0:
                due = left
                break
            future.cancel()  # its callback (``_signed``) writes it when first in line
            late.append(entry.request_id)
        if late:
            self._direct.component.live_expired(len(late))
            log.warning("OCSP: live answer(s) not signed within %.0f s, tryLater: request id(s) %s", self.timeout,
                        " ".join(late))
        if due is not None:
            self.timer = asyncio.get_running_loop().call_later(due, self._overdue)

    def abandon(self) -> None:
        """The connection is lost: nobody reads what is still being signed."""
        self.gone = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        queue, self.queue = self.queue, collections.deque()
        for entry in queue:
            if entry.future is not None:
                entry.future.cancel()

    def _signed(self, future: asyncio.Future[Outcome]) -> None:
        """A live answer is known: write every answer now first in line.

        A done-callback: asyncio logs what escapes it and goes on, and the connection, its reading paused and
        no timer set, would then wait forever. Anything failing here (writing, or taking up what waited:
        ``drained``) aborts the connection instead, as a failure in ``data_received`` does."""
        if self.gone:
            return
        direct, queue = self._direct, self.queue
        if not queue or queue[0].future is not future:
            return  # behind one still being signed (or written already, with the one before it)
        try:
            while queue:
                entry = queue[0]
                if entry.future is not None:
                    if not entry.future.done():
                        return
                    entry.outcome = direct.finish(entry.future, entry.started, entry.request_id)
                    entry.future = None
                queue.popleft()
                assert entry.outcome is not None
                self.transport.write(direct.response(entry.outcome, entry.get, entry.request_id, entry.close))
            if self.closing:
                self.transport.close()
            else:
                self.drained()
        except Exception:
            log.exception("OCSP: answering after a live answer failed: connection aborted")
            self.transport.abort()


class DirectAnswers:
    """``answer(data, answers)``: answers the whole requests at the start of ``data`` in the subset, held or
    signed live, and returns how many bytes they took (``len(data)``: all; less: what follows is not taken
    now, see the module's docstring)."""

    def __init__(self, component: OcspComponent, clock: Callable[[], float] = time.time) -> None:
        self.component = component
        self.clock = clock
        self._date_at = -1
        self._date = b""

    def connection(self, transport: Writer, drained: Callable[[], None], timeout: float = 10.0) -> Answers:
        """The answer queue of a new connection; ``timeout``: how long an answer may take to sign (the gate's
        request deadline)."""
        return Answers(self, transport, drained, timeout)

    def answer(self, data: bytes, answers: Answers) -> int:
        pos, size = 0, len(data)
        component = self.component
        responder = component.responder
        assert responder is not None
        transport, queue = answers.transport, answers.queue
        if answers.closing:  # closed once its answers are written (shutdown, end of input): nothing more is read
            return size
        while pos < size:
            if len(queue) >= MAX_PENDING or transport.get_write_buffer_size() > WRITE_LIMIT:
                return pos
            parsed = parse(data, pos)
            if parsed is None:
                return pos
            end, received, get, given_id, close = parsed
            started = time.perf_counter()
            try:
                outcome = responder.from_cache(received)
            except Exception:  # aiohttp's handler answers it again, and logs what went wrong
                return pos
            if isinstance(outcome, Outcome):
                responder.stats.count(outcome.status, outcome.path)
                component.metrics.latency.observe(outcome.path, time.perf_counter() - started)
                request_id = logs.take_request_id(given_id)
                if queue:  # behind an answer being signed
                    queue.append(_Entry(outcome, None, get, request_id, close, started))
                else:
                    transport.write(self.response(outcome, get, request_id, close))
            elif answers.hand_over and not queue and not transport.get_write_buffer_size():
                answers.live_next = True  # to be signed: the caller hands the connection over from here, or not
                return pos
            else:  # to be signed: in flight until its future is done
                future = component.live_future(received, outcome)
                queue.append(_Entry(None, future, get, logs.take_request_id(given_id), close, started))
                future.add_done_callback(answers._signed)
                answers.watch()
            if close:  # what follows is not read (as aiohttp does)
                answers.close_when_written()
                return size
            pos = end
        return pos

    def finish(self, future: asyncio.Future[Outcome], started: float, request_id: str) -> Outcome:
        """A live answer's outcome, counted as the aiohttp handler counts it (never an exception); what is
        logged carries the request's id, as the aiohttp path's logs do (``logs.request_id``)."""
        ids = {"request_id": request_id}
        try:
            outcome = future.result()
        except asyncio.CancelledError:  # not signed within the request deadline (``Answers._overdue``), or stopping
            outcome = error_outcome(resp.TRY_LATER, "error")
        except (ConnectionError, TimeoutError) as exc:  # a serving process's signer unreachable or too busy
            log.warning("OCSP: the main process could not sign a live answer: %s", exc or type(exc).__name__,
                        extra=ids)
            outcome = error_outcome(resp.TRY_LATER, "error")
        except Exception:  # never a 500: an internalError response, logged (as OcspComponent._answer)
            log.exception("OCSP request failed unexpectedly", extra=ids)
            outcome = error_outcome(resp.INTERNAL_ERROR)
        responder = self.component.responder
        assert responder is not None
        responder.stats.count(outcome.status, outcome.path)
        self.component.metrics.latency.observe(outcome.path, time.perf_counter() - started)
        return outcome

    def response(self, outcome: Outcome, get: bool, request_id: str, close: bool) -> bytes:
        now = int(self.clock())
        if now != self._date_at:
            self._date, self._date_at = f"Date: {http_date(now)}\r\n".encode(), now
        return b"".join((outcome.wire_head(now, get), b"X-Request-ID: ", request_id.encode(), b"\r\n",
                         outcome.wire_length, self._date, _SERVER, _CLOSE if close else _KEEP, outcome.body))


def parse(data: bytes, pos: int) -> tuple[int, bytes | str, bool, str, bool] | None:
    """The request at ``data[pos:]`` when it is whole and in the subset taken here: (where it ends, what the
    answer path receives: the POST body or the GET path after ``/ocsp``, GET or not, its X-Request-ID, whether
    the client closes after it); else None."""
    head_end = data.find(b"\r\n\r\n", pos, pos + MAX_HEAD + 4)
    if head_end < 0:
        return None
    lines = data[pos:head_end].split(b"\r\n")
    if len(lines) > MAX_FIELDS + 1:
        return None
    line = lines[0]
    if line == b"POST /ocsp HTTP/1.1" or line == b"POST /ocsp/ HTTP/1.1":
        get = False
    elif line.endswith(b" HTTP/1.1") and _GET_TARGET.fullmatch(line, 4, len(line) - 9) and line[:4] == b"GET ":
        get = True
    else:
        return None
    length: int | None = None
    content_type: bytes | None = None
    given_id: str | None = None
    close: bool | None = None
    host = agent = False
    for field in lines[1:]:
        match = _FIELD.fullmatch(field)
        if match is None:
            return None
        name, value = match.group(1).lower(), match.group(2) or b""
        if name == b"host":  # one, as aiohttp wants (RFC 9112 section 3.2: else a 400)
            if host:
                return None
            host = True
        elif name == b"content-length":
            if length is not None or not value.isdigit() or len(value) > 6:
                return None
            length = int(value)
        elif name == b"content-type":
            if content_type is not None:
                return None
            content_type = value.lower()
        elif name == b"user-agent":  # a second one: aiohttp's 400
            if agent:
                return None
            agent = True
        elif name == b"connection":
            value = value.lower()
            if close is not None or value not in (b"keep-alive", b"close"):
                return None
            close = value == b"close"
        elif name == b"x-request-id":
            if given_id is not None:  # aiohttp's path would take the first
                return None
            given_id = value.decode("ascii")
        elif name in _REFUSED_FIELDS:
            return None
    if not host:
        return None
    body_at = head_end + 4
    if get:
        return (body_at, line[9:-9].decode("ascii"), True, given_id or "", bool(close)) if not length else None
    if length is None or length > MAX_BODY or content_type != b"application/ocsp-request":
        return None
    end = body_at + length
    if end > len(data):
        return None
    return end, data[body_at:end], False, given_id or "", bool(close)
