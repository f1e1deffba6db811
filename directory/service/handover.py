"""A client's connection handed by a serving process to the main process, for its live OCSP answers.

With ``[http] workers`` a nonce (or a miss) is signed in the main process, the one with the HSM. Carried over
``livewire`` each such answer costs a hop (a frame each way, both event loops woken: about 90 µs of CPU per
answer on a 2-core machine, issue 15 §3). A connection that asks for one is likely to ask for more (an RFC
5019 client with nonces, a load balancer's health checker): at its first, the serving process hands the
connection itself to the main process (SCM_RIGHTS over a unix socket), which then answers everything on it,
held answers too (it has the store), and the hop is paid once per connection instead of once per answer.

The pass happens at a request boundary with nothing in flight (``ocsp.direct``: no answer queued, nothing
unsent), only on the plain listener of a serving process. One message (SOCK_SEQPACKET: its bytes and its
descriptor arrive together or not at all): ``>IQ`` (a number, when sent) + the bytes read and not answered (the live
request, and whatever followed it in the same read: pipelined requests, part of one), with exactly one
descriptor. The serving process stops reading the connection before it sends, and keeps its own descriptor
until the main process answers ``>IB`` (the number, 1: taken, 0: refused):

- taken: the serving process closes its descriptor (a close, never a shutdown: the client's connection stays
  up, the main process's descriptor holds it) and counts it (``ConnectionGate.handed_over``); the main process
  feeds the carried bytes to its own gate (``_Gated(carried=...)``, ``transit.py``) before anything read from the
  socket, so nothing is lost or reordered. Its deadlines (idle, request, signing) start afresh there.
- refused (the main process's cap of adopted connections reached, a descriptor it does not accept), or not
  sent at all: the serving process reads on and answers over ``livewire``, as before (stopping, it closes the
  connection once that is written: it waits for the main process's answer first). It offers a connection
  once: a refused one is not offered again.
- no answer (none within ``timeout``, or the socket to the main process lost with offers sent): closed here,
  never taken back, since the main process may have the descriptor and serve it (two processes answering one
  connection would give each answer to the wrong request). The main process then must not refuse it either
  (closed by both, the request is lost unanswered): an offer carries when it was sent (``>IQ``: the number,
  CLOCK_MONOTONIC in ns, one clock for every process of the host), and the main process refuses only offers
  younger than ``timeout`` less ``HANDBACK_MARGIN``, once its refusal is sent; any other it keeps and answers
  503 itself (``Adopter.late``), as a listener past its cap does.

The main process takes one descriptor per message, of a connected stream socket (not a listening one) of
the listener's families (AF_INET, AF_INET6), from a peer of its own user; anything else is closed and
refused. The carried bytes are at most ``MAX_CARRIED`` (more: not offered) and go to that connection only.
Adopted connections count against a cap of their own (``ConnectionGate.cap``, the main process's share of
descriptors for the public listener, unused otherwise with serving processes): past it, refused (in time), or
answered 503 (late).
"""

from __future__ import annotations

import array
import asyncio
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from directory.service.listener import _Gated

if TYPE_CHECKING:
    from directory.service.listener import ConnectionGate
    from directory.service.transit import Transit

log = logging.getLogger(__name__)
_OFFER = struct.Struct(">IQ")  # number, when sent (CLOCK_MONOTONIC, ns: one clock for every process of the host)
_REPLY = struct.Struct(">IB")
# seconds before a serving process gives an offer up within which the main process no longer hands it back: its
# answer (sent right after it looked at the clock) is then surely waiting when the serving process looks
HANDBACK_MARGIN = 0.5
MAX_CARRIED = 64 * 1024  # bytes carried with a connection (a request is at most ~18 KiB: head and body)
_FD = array.array("i", [0]).itemsize
FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6})  # the public listener's (``directory/service/sockets.py``)
# sendmsg failures of one message (too big for the socket's send buffer, too many descriptors in flight for the
# user, memory): that offer is not sent, the socket and the offers waiting on it are fine
_NOT_SENT = frozenset({errno.EMSGSIZE, errno.ETOOMANYREFS, errno.ENOBUFS, errno.ENOMEM})


class Passer:
    """The serving process's side: one SOCK_SEQPACKET connection to ``path``, opened when first needed (and
    again after a loss); ``offer`` sends a connection, its answer comes to ``Transit.answered``."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path, self.timeout = path, timeout
        self.sock: socket.socket | None = None
        self.waiting: dict[int, tuple[Transit, float]] = {}
        self._number = 0
        self._sweep: asyncio.TimerHandle | None = None

    def offer(self, transit: Transit, carried: bytes) -> bool:
        """Send ``transit``'s connection and ``carried``; False when it could not be sent (then it stays here)."""
        transport = transit.gated.transport
        if len(carried) > MAX_CARRIED or transport is None or transport.is_closing():
            return False
        own = transport.get_extra_info("socket")
        sock = self.sock or self._connect()
        if sock is None or own is None:
            return False
        self._number = number = (self._number + 1) & 0xFFFFFFFF
        sent = time.monotonic_ns()
        try:
            sock.sendmsg([_OFFER.pack(number, sent), carried],
                           [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [own.fileno()]))])
        except BlockingIOError:  # the main process is behind on its messages: not now
            return False
        except OSError as exc:
            log.warning("connection hand-over: %s: %s", self.path, exc)
            if exc.errno not in _NOT_SENT:
                self._lost()
            return False
        self.waiting[number] = (transit, sent / 1e9 + self.timeout)  # given up then (``time.monotonic``)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self.timeout, self._expire)
        return True

    def _connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            sock.connect(self.path)
        except OSError as exc:  # no main process listening (stopping, restarting), or its queue full
            log.debug("connection hand-over: %s: %s", self.path, exc)
            sock.close()
            return None
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        self.sock = sock
        return sock

    def _readable(self) -> None:
        sock = self.sock
        assert sock is not None
        while True:
            try:
                reply = sock.recv(64)
            except BlockingIOError:
                return
            except OSError:
                reply = b""
            if len(reply) != _REPLY.size:  # the main process is gone (or broken): what it did not answer stays
                self._lost()
                return
            number, taken = _REPLY.unpack(reply)
            waiting = self.waiting.pop(number, None)
            if waiting is not None:
                _answer(waiting[0], bool(taken))
            elif not taken:  # handed back after it was given up here: nobody answers it (``HANDBACK_MARGIN``)
                log.error("connection hand-over: offer %d handed back after its deadline: connection lost", number)

    def _expire(self) -> None:
        """No answer within ``timeout`` of the offer: the descriptor is closed here (the main process has it: it
        serves it, or answers it 503, this process must not). The clock is read first, then the answers already
        sent are taken in: an offer the main process handed back before that moment is answered here, and it
        hands back none later than ``HANDBACK_MARGIN`` before this deadline (``Adopter``)."""
        self._sweep = None
        now, soonest = time.monotonic(), None
        if self.sock is not None:
            self._readable()
        for number, (transit, deadline) in list(self.waiting.items()):
            if deadline <= now:
                del self.waiting[number]
                log.warning("connection hand-over: no answer from the main process within %.0f s", self.timeout)
                _answer(transit, None)
            else:
                soonest = deadline if soonest is None else min(soonest, deadline)
        if soonest is not None:
            self._sweep = asyncio.get_running_loop().call_later(soonest - now, self._expire)

    def _lost(self) -> None:
        """The connection to the main process is gone: what it did not answer is closed here, never taken back.
        The main process may have read those offers (their descriptors with them) and serve them, its end
        closed on a read error, or its answers lost: served here too, a connection would get two answers to
        one request, and each later answer would be another request's. A main process that exits closes the
        descriptors it took: those connections are gone either way."""
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        waiting, self.waiting = self.waiting, {}
        for transit, _ in waiting.values():
            _answer(transit, None)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._lost()


class Adopter:
    """The main process's side: listens on ``path``, and adopts what is offered into ``gate`` through
    ``adopt(sock, carried)`` (a connection made ready by the caller: ``connect_accepted_socket`` with a
    ``_Gated`` fed ``carried`` first)."""

    def __init__(self, path: str, gate: ConnectionGate,
                 adopt: Callable[[socket.socket, bytes], asyncio.Future[object]],
                 families: frozenset[int] = FAMILIES, timeout: float = 10.0) -> None:
        self.path, self.gate, self.adopt, self.families = path, gate, adopt, families
        # the serving processes' ``Passer.timeout``: an offer older than that, less a margin, is not handed back
        self.handback_ns = int((timeout - min(HANDBACK_MARGIN, timeout / 4)) * 1e9)
        self.adopting = 0  # taken, not yet connected (``gate.open`` counts them once they are)
        self.adopted = 0
        self.refused = 0
        self.late = 0  # offers read too late to hand back: answered 503 here
        self.sock: socket.socket | None = None
        self.peers: dict[int, socket.socket] = {}

    def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        sock.bind(self.path)
        sock.listen(64)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)
        self.sock = sock

    def _accept(self) -> None:
        assert self.sock is not None
        try:
            peer, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # out of descriptors (or memory): not every event-loop turn, as asyncio's servers
            log.error("connection hand-over: %s: accept failed: %s", self.path, exc)
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.sock.fileno())
            loop.call_later(1.0, self._resume)
            return
        # the directory is this user's alone; checked again on the peer itself
        try:
            uid = struct.unpack("3i", peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                      struct.calcsize("3i")))[1]
        except OSError:
            uid = -1
        if uid != os.getuid():
            log.warning("connection hand-over: peer of uid %d refused", uid)
            peer.close()
            return
        peer.setblocking(False)
        self.peers[peer.fileno()] = peer
        asyncio.get_running_loop().add_reader(peer.fileno(), self._readable, peer)

    def _resume(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)

    def _readable(self, peer: socket.socket) -> None:
        while True:
            try:
                data, ancillary, flags, _ = peer.recvmsg(_OFFER.size + MAX_CARRIED + 1, socket.CMSG_SPACE(2 * _FD),
                                                         socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return
            except OSError:
                data, ancillary, flags = b"", [], 0
            fds = _descriptors(ancillary)
            if not data:  # the serving process is gone
                for fd in fds:
                    os.close(fd)
                self._drop(peer)
                return
            self._offered(peer, data, fds, flags)

    def _offered(self, peer: socket.socket, data: bytes, fds: list[int], flags: int) -> None:
        if len(data) < _OFFER.size:
            log.warning("connection hand-over: a message of %d bytes refused", len(data))
            for fd in fds:
                os.close(fd)
            return
        number, sent = _OFFER.unpack_from(data)
        sock, problem = None, None
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            problem = "truncated"
        elif len(fds) != 1:
            problem = f"{len(fds)} descriptors"
        else:
            sock, problem = _stream(fds[0], self.families)
            fds = []
        for fd in fds:
            os.close(fd)
        if sock is None:
            # a client gone (reset) before this process looked at its connection: its doing, as often as it
            # likes, not an anomaly of the hand-over (a warning each time would let any client write the log)
            (log.debug if problem == GONE else log.warning)("connection hand-over refused: %s", problem)
            self._reply(peer, number, False)
            return
        gate = self.gate
        age = time.monotonic_ns() - sent
        timely = age < self.handback_ns
        if timely and self.sock is not None and gate.open + self.adopting < gate.cap:
            self.adopting += 1
            self.adopted += 1
            self._reply(peer, number, True)
            self.adopt(sock, data[_OFFER.size:]).add_done_callback(self._adopted)
            return
        if timely and self._reply(peer, number, False):
            self.refused += 1
            sock.close()  # this process's descriptor only: the serving process keeps the connection
            return
        # too late to hand back (the serving process has given it up, or will have when the answer comes), or the
        # answer not sent: closed by both, the request would be lost unanswered. Kept here, and answered 503.
        self.late += 1
        log.warning("connection hand-over: offer %s: answered 503",
                    f"read {age / 1e9:.1f} s after it was sent" if not timely else "whose refusal could not be sent")
        self._reply(peer, number, True)
        self.adopting += 1
        asyncio.ensure_future(self._turn_away(sock)).add_done_callback(self._adopted)

    async def _turn_away(self, sock: socket.socket) -> None:
        """The listener's own refusal (``_Gated``: a 503, closed once the client has read it)."""
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: _Gated(None, self.gate, late=True),
                                                                      sock)
        except BaseException:
            sock.close()
            raise

    def _adopted(self, done: asyncio.Future[object]) -> None:
        self.adopting -= 1
        if not done.cancelled() and done.exception() is not None:
            log.error("connection hand-over: adopting failed: %r", done.exception())

    def _reply(self, peer: socket.socket, number: int, taken: bool) -> bool:
        """False when not sent (a serving process gone, or not reading its answers: it gives up waiting)."""
        try:
            peer.send(_REPLY.pack(number, taken))
        except OSError as exc:
            log.warning("connection hand-over: answer not sent: %s", exc)
            return False
        return True

    def _drop(self, peer: socket.socket) -> None:
        if self.peers.pop(peer.fileno(), None) is not None:
            asyncio.get_running_loop().remove_reader(peer.fileno())
            peer.close()

    def close(self) -> None:
        """Stop adopting (shutdown): messages not read yet are refused by the close (their descriptors go)."""
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        for peer in list(self.peers.values()):
            self._drop(peer)


def _answer(transit: Transit, taken: bool | None) -> None:
    """``transit.answered`` (``taken`` None: not known, closed here); what fails in it (taking up the carried
    bytes here) aborts that connection alone, as a failure in ``data_received`` would."""
    try:
        transit.answered(taken)
    except Exception:
        log.exception("connection hand-over: answering the connection failed: aborted")
        transport = transit.gated.transport
        if transport is not None:
            transport.abort()


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """Every descriptor received (SCM_RIGHTS), whatever else came: each is either adopted or closed."""
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", payload[:len(payload) - len(payload) % _FD]))
    return fds


GONE = "the client is gone (not connected)"


def _stream(fd: int, families: frozenset[int]) -> tuple[socket.socket | None, str]:
    """``fd`` as a socket if it is a connected stream socket of ``families``; else closed, and why."""
    try:
        sock = socket.socket(fileno=fd)  # its family and type asked of the kernel (SO_DOMAIN, SO_TYPE)
    except OSError as exc:
        os.close(fd)
        return None, f"not a socket ({exc.strerror})"
    try:
        if sock.type != socket.SOCK_STREAM or sock.family not in families:
            problem = f"a socket of family {sock.family!r}, type {sock.type!r}"
        elif sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            problem = "a listening socket"
        else:
            sock.getpeername()  # OSError (ENOTCONN) when not connected
            sock.setblocking(False)
            return sock, ""
    except OSError as exc:
        problem = GONE if exc.errno == errno.ENOTCONN else f"not a connected socket ({exc.strerror})"
    sock.close()
    return None, problem
