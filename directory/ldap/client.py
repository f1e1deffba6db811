"""A blocking LDAPv3 connection that pipelines: many requests in flight, answers matched by message ID.

Used from one worker thread at a time. It speaks only what the sync needs (simple bind, StartTLS, search
with the paged-results control, add, modify, delete) over ``ldap://``, ``ldaps://`` or ``ldapi://``, and
fails over along the configured URL list. Connection trouble of any kind (refused, reset, timeout of a
stalled server, notice of disconnection, busy/unavailable) is ``LdapUnavailable``: the caller keeps its
work and retries later. A refused operation is an ``OpResult`` with the server's code and message.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from directory.ldap import ber
from directory.ldap.codes import explain

SUCCESS = 0
SIZE_LIMIT_EXCEEDED = 4
NO_SUCH_ATTRIBUTE = 16
ATTRIBUTE_OR_VALUE_EXISTS = 20
NO_SUCH_OBJECT = 32
INVALID_CREDENTIALS = 49
NOT_ALLOWED_ON_NON_LEAF = 66
BUSY, UNAVAILABLE = 51, 52
ALREADY_EXISTS = 68
_UNAVAILABLE_CODES = {BUSY, UNAVAILABLE, 80}  # 80: "other", what slapd says when its database is not ready
T = TypeVar("T")


class LdapError(RuntimeError):
    """The directory refused what cannot be retried as is (bad credentials, a refused search)."""


class LdapUnavailable(LdapError):
    """No directory reachable, or the connection broke or stalled: retry later, nothing was lost."""


@dataclass(frozen=True)
class Add:
    dn: str
    attributes: dict[str, list[bytes]]


@dataclass(frozen=True)
class Modify:
    dn: str
    changes: tuple[tuple[int, str, tuple[bytes, ...]], ...]


@dataclass(frozen=True)
class Delete:
    dn: str


Operation = Add | Modify | Delete


@dataclass(frozen=True)
class OpResult:
    operation: Operation
    code: int
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code == SUCCESS

    def text(self) -> str:
        """The code said in words, with the server's message (``65 objectClassViolation: ...``)."""
        return explain(self.code, self.message, self.operation.dn)


class Entry:
    """A directory entry as read. Its attributes are decoded on first use: a reconciliation that already
    knows the entry is unchanged (``fingerprint``) never pays for it."""

    __slots__ = ("_attributes", "_end", "_message", "_start", "dn")

    def __init__(self, dn: str, attributes: dict[str, list[bytes]] | None = None, message: bytes = b"",
                 start: int = 0, end: int = 0) -> None:
        self.dn = dn
        self._attributes = attributes
        self._message, self._start, self._end = message, start, end

    @property
    def attributes(self) -> dict[str, list[bytes]]:
        if self._attributes is None:
            try:
                self._attributes = ber.decode_attributes(self._message, self._start, self._end)
            except ber.BerError as exc:  # the server sent it: a server we cannot talk to, not a bug of ours
                raise LdapUnavailable(f"undecodable entry {self.dn!r} from the server: {exc}") from exc
        return self._attributes

    def fingerprint(self) -> bytes:
        """Digest of the attributes exactly as the server sent them (same state, same bytes)."""
        if self._message:
            return hashlib.blake2b(memoryview(self._message)[self._start:self._end], digest_size=16).digest()
        text = repr(sorted((name, sorted(values)) for name, values in self.attributes.items()))
        return hashlib.blake2b(text.encode(), digest_size=16).digest()

    def __repr__(self) -> str:
        return f"Entry({self.dn!r})"


class LdapClient:
    """One connection (re-opened on demand). ``window`` bounds the requests in flight."""

    def __init__(self, urls: Sequence[str], bind_dn: str, password: str, timeout: float = 15.0,
                 window: int = 8, tls_context: ssl.SSLContext | None = None, start_tls: bool = False) -> None:
        self.urls = tuple(urls)
        self.bind_dn = bind_dn
        self._password = password
        self.timeout = timeout
        self.window = window
        self.tls_context = tls_context
        self.start_tls = start_tls
        self._sock: socket.socket | ssl.SSLSocket | None = None
        self._buf = bytearray()
        self._next_id = 0
        self.url: str | None = None  # the URL currently connected to

    # -- connection ----------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect and bind to the first URL that answers; ``LdapUnavailable`` when none does."""
        if self._sock is not None:
            return
        problems = []
        for url in self.urls:
            try:
                self._open(url)
                self._bind()
                self.url = url
                return
            except LdapUnavailable as exc:
                problems.append(f"{url}: {exc}")
                self.close()
            except LdapError:
                self.close()
                raise
        raise LdapUnavailable("; ".join(problems) or "no LDAP URL configured")

    def _open(self, url: str) -> None:
        parts = urlsplit(url)
        try:
            if parts.scheme == "ldapi":
                sock: socket.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(unquote(parts.netloc or "/var/run/slapd/ldapi"))
            else:
                port = parts.port or (636 if parts.scheme == "ldaps" else 389)
                sock = socket.create_connection((parts.hostname or "localhost", port), timeout=self.timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if parts.scheme == "ldaps":
                    sock = self._tls().wrap_socket(sock, server_hostname=parts.hostname)
        except OSError as exc:
            raise LdapUnavailable(str(exc) or type(exc).__name__) from exc
        self._sock = sock
        self._buf.clear()
        if self.start_tls and parts.scheme == "ldap":
            code, _, message = self._single(ber.extended_request(ber.START_TLS_OID), ber.EXTENDED_RESPONSE)
            if code != SUCCESS:
                raise LdapError(f"StartTLS refused: {explain(code, message)}")
            try:
                self._sock = self._tls().wrap_socket(self._sock, server_hostname=parts.hostname)
            except OSError as exc:
                raise LdapUnavailable(f"TLS: {exc}") from exc

    def _tls(self) -> ssl.SSLContext:
        return self.tls_context or ssl.create_default_context()

    def _bind(self) -> None:
        code, _, message = self._single(ber.bind_request(self.bind_dn, self._password), ber.BIND_RESPONSE)
        if code in _UNAVAILABLE_CODES:
            raise LdapUnavailable(f"bind: {explain(code, message, self.bind_dn)}")
        if code != SUCCESS:
            # never echo the password; the DN is not a secret
            raise LdapError(f"bind as {self.bind_dn} refused: {explain(code, message, self.bind_dn)}")

    def close(self) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(OSError):
            self._sock.sendall(ber.message(self._id(), ber.tlv(ber.UNBIND_REQUEST, b"")))
        with contextlib.suppress(OSError):
            self._sock.close()
        self._sock = None
        self._buf.clear()

    def __enter__(self) -> LdapClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- wire ----------------------------------------------------------------------------------------
    def _id(self) -> int:
        self._next_id = self._next_id % 0x7FFFFFFE + 1
        return self._next_id

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self.close()
            raise LdapUnavailable(f"send: {exc}") from exc

    def _receive(self) -> bytes:
        """The next whole LDAPMessage from the socket."""
        assert self._sock is not None
        buf = self._buf
        while True:
            try:
                size = ber.frame_length(buf, 0) if buf else None
            except ber.BerError as exc:  # an indefinite or absurd length: not a server we can talk to
                self.close()
                raise LdapUnavailable(f"undecodable message from the server: {exc}") from exc
            if size is not None and len(buf) >= size:
                msg = bytes(buf[:size])
                del buf[:size]
                return msg
            try:
                chunk = self._sock.recv(1 << 18)
            except (OSError, TimeoutError) as exc:
                self.close()
                raise LdapUnavailable(f"receive: {exc or 'timed out'}") from exc
            if not chunk:
                self.close()
                raise LdapUnavailable("connection closed by the server")
            buf += chunk

    def _next(self) -> tuple[int, int, bytes, int, int, list[tuple[int, int, int]]]:
        msg = self._receive()
        msg_id, tag, start, end, controls = self._decode(ber.split_message, msg)
        if msg_id == 0:  # unsolicited notification: notice of disconnection
            self.close()
            raise LdapUnavailable("the server announced it is disconnecting")
        return msg_id, tag, msg, start, end, controls

    def _single(self, op: bytes, expected: int) -> tuple[int, str, str]:
        if self._sock is None:
            raise LdapUnavailable("not connected")
        msg_id = self._id()
        self._send(ber.message(msg_id, op))
        got, tag, msg, start, end, _ = self._next()
        if got != msg_id or tag != expected:
            self.close()
            raise LdapUnavailable(f"unexpected answer (id {got}, tag {tag:#x})")
        return self._decode(ber.ldap_result, msg, start, end)

    def _decode(self, decoder: Callable[..., T], *args: Any) -> T:
        """A decoder's answer; a message it refuses means a server we cannot talk to: closed, unavailable."""
        try:
            return decoder(*args)
        except ber.BerError as exc:
            self.close()
            raise LdapUnavailable(f"undecodable message from the server: {exc}") from exc

    # -- operations ----------------------------------------------------------------------------------
    def search(self, base: str, scope: int = ber.SCOPE_SUBTREE, attributes: Sequence[str] = ("*",),
               page_size: int = 2000) -> Iterator[Entry]:
        """Entries under ``base`` (paged, so a server size limit does not truncate). Missing base: nothing."""
        self.connect()
        drained = False
        try:
            yield from self._pages(base, scope, attributes, page_size)
            drained = True
        finally:
            if not drained:  # the caller stopped early or failed: answers may still be on the wire
                self.close()

    def _pages(self, base: str, scope: int, attributes: Sequence[str], page_size: int) -> Iterator[Entry]:
        cookie = b""
        while True:
            msg_id = self._id()
            controls = [ber.paged_control(page_size, cookie)] if scope != ber.SCOPE_BASE else []
            self._send(ber.message(msg_id, ber.search_request(base, scope, attributes), controls))
            cookie = b""
            while True:
                got, tag, msg, start, end, ctrls = self._next()
                if got != msg_id:
                    self.close()
                    raise LdapUnavailable(f"answer to an unknown request {got}")
                if tag == ber.SEARCH_ENTRY:
                    dn, pos, attrs_end = self._decode(ber.entry_header, msg, start, end)
                    yield Entry(dn, None, msg, pos, attrs_end)
                elif tag == ber.SEARCH_DONE:
                    code, _, message = self._decode(ber.ldap_result, msg, start, end)
                    if code == NO_SUCH_OBJECT:
                        return
                    if code in _UNAVAILABLE_CODES:
                        self.close()
                        raise LdapUnavailable(f"search {base}: {explain(code, message, base)}")
                    if code == SIZE_LIMIT_EXCEEDED:
                        raise LdapError(f"search {base}: the directory limits how many entries {self.bind_dn} may "
                                        "read (sizeLimitExceeded); a reconciliation reads whole branches: give it "
                                        f'`limits dn.exact="{self.bind_dn}" size=unlimited` (see provider.conf)')
                    if code != SUCCESS:
                        raise LdapError(f"search {base} refused: {explain(code, message, base)}")
                    cookie = self._decode(ber.paged_cookie, msg, ctrls)
                    break
                # references are not followed: our branches live in one database
            if not cookie:
                return

    def read(self, dns: Sequence[str], attributes: Sequence[str] = ("*",)) -> dict[str, Entry | None]:
        """Base-scope reads of many entries, pipelined. Keyed by the DN asked; None when absent."""
        self.connect()
        out: dict[str, Entry | None] = {}
        pending: dict[int, str] = {}
        queue = list(dns)
        sent = 0
        while sent < len(queue) or pending:
            while sent < len(queue) and len(pending) < self.window:
                msg_id = self._id()
                pending[msg_id] = queue[sent]
                self._send(ber.message(msg_id, ber.search_request(queue[sent], ber.SCOPE_BASE, attributes)))
                sent += 1
            got, tag, msg, start, end, _ = self._next()
            dn = pending.get(got)
            if dn is None:
                self.close()
                raise LdapUnavailable(f"answer to an unknown request {got}")
            if tag == ber.SEARCH_ENTRY:
                entry_dn, pos, attrs_end = self._decode(ber.entry_header, msg, start, end)
                out[dn] = Entry(entry_dn, None, msg, pos, attrs_end)
            elif tag == ber.SEARCH_DONE:
                del pending[got]
                code, _, message = self._decode(ber.ldap_result, msg, start, end)
                if code == NO_SUCH_OBJECT:
                    out[dn] = None
                elif code in _UNAVAILABLE_CODES:
                    self.close()
                    raise LdapUnavailable(f"read {dn}: {explain(code, message, dn)}")
                elif code != SUCCESS:
                    raise LdapError(f"read {dn} refused: {explain(code, message, dn)}")
                else:
                    out.setdefault(dn, None)
        return out

    def apply(self, operations: Sequence[Operation]) -> list[OpResult]:
        """Send the operations pipelined (at most ``window`` in flight), in order; one result each.

        Operations on different entries are independent; the caller orders dependent ones (a parent's
        add before its children) in separate calls.
        """
        self.connect()
        results: dict[int, OpResult] = {}
        pending: dict[int, tuple[int, Operation]] = {}
        sent = 0
        while sent < len(operations) or pending:
            while sent < len(operations) and len(pending) < self.window:
                op = operations[sent]
                msg_id = self._id()
                pending[msg_id] = (sent, op)
                self._send(ber.message(msg_id, _encode(op)))
                sent += 1
            got, _tag, msg, start, end, _ = self._next()
            item = pending.pop(got, None)
            if item is None:
                self.close()
                raise LdapUnavailable(f"answer to an unknown request {got}")
            code, _, message = self._decode(ber.ldap_result, msg, start, end)
            if code in _UNAVAILABLE_CODES:
                self.close()
                raise LdapUnavailable(f"{type(item[1]).__name__.lower()} {item[1].dn}: "
                                      f"{explain(code, message, item[1].dn)}")
            results[item[0]] = OpResult(item[1], code, message)
        return [results[i] for i in range(len(operations))]


def _encode(op: Operation) -> bytes:
    if isinstance(op, Add):
        return ber.add_request(op.dn, op.attributes)
    if isinstance(op, Modify):
        return ber.modify_request(op.dn, op.changes)
    return ber.delete_request(op.dn)
