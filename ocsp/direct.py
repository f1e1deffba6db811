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
otherwise (no smuggling through the difference), and aiohttp would answer it, not refuse it. Anything else,
and any request whose answer is not held (it needs the HSM), is left to aiohttp from that request on: the
caller then hands the rest of the connection to aiohttp for good, so its parser starts at a request boundary
and the answers keep their order.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from aiohttp.http import SERVER_SOFTWARE

from directory import logs
from directory.httpdate import http_date
from ocsp.lookup import Outcome
from ocsp.request import MAX_BODY

if TYPE_CHECKING:
    from ocsp.http import OcspComponent

MAX_HEAD = 8190  # request line and header fields, as aiohttp's own line limit: longer ones are aiohttp's
MAX_FIELDS = 32
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


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def close(self) -> None: ...


class DirectAnswers:
    """``answer(data, transport)``: answers the whole requests at the start of ``data`` that are held, and
    returns how many bytes they took (``len(data)``: all; less: aiohttp takes the rest)."""

    def __init__(self, component: OcspComponent, clock: Callable[[], float] = time.time) -> None:
        self.component = component
        self.clock = clock
        self._date_at = -1
        self._date = b""

    def answer(self, data: bytes, transport: Writer) -> int:
        pos, size = 0, len(data)
        responder = self.component.responder
        assert responder is not None
        while pos < size:
            if transport.get_write_buffer_size() > WRITE_LIMIT:
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
            if not isinstance(outcome, Outcome):  # to be signed: the handler's (asynchronous) path
                return pos
            responder.stats.count(outcome.status, outcome.path)
            self.component.metrics.latency.observe(outcome.path, time.perf_counter() - started)
            transport.write(self._response(outcome, get, logs.take_request_id(given_id), close))
            if close:  # what follows is not read (as aiohttp does)
                transport.close()
                return size
            pos = end
        return pos

    def _response(self, outcome: Outcome, get: bool, request_id: str, close: bool) -> bytes:
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
