"""Adversarial cases of the hand-over of a client connection to the main process (``directory/service/handover.py``):
what a client or the kernel can make of it. The real service and SoftHSM2, or real sockets and gates."""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import shutil
import socket
import struct
import tempfile
import time
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.x509 import ocsp

from directory.service.handover import _OFFER, MAX_CARRIED, Adopter, Passer
from directory.service.listener import ConnectionGate, _Gated
from ocsp.direct import DirectAnswers
from tests.served import http, serve
from tests.test_handover import _check_signed, _holder, _metric, _serial
from tests.test_ocsp_direct import (
    _answers,
    _body,
    _client,
    _connect,
    _gated,
    _Reader,
    _requests,
    _Signing,
    _until,
    _until_held,
    _wire,
    _wire_get,
    _wire_post,
)
from tests.test_workers import _workers


def test_an_adopted_connection_left_to_aiohttp_is_closed_after_idle_timeout(demo: Path) -> None:
    """A nonce then a request the direct path does not take (here /healthz), in one write: the main process
    answers both, the second through its aiohttp application, whose keep-alive there is the one for serving
    processes' own connections (60 s at least). The client's connection must still be closed after ``[http]
    idle_timeout`` of silence, as a serving process would have closed it: a handed-over connection must not hold
    a descriptor of the main process four times longer."""
    demo.write_text(demo.read_text().replace("[http]\n", "[http]\nworkers = 2\nidle_timeout = 2\n", 1))
    with serve(demo) as served:
        base, port, main = served.base, int(served.base.rsplit(":", 1)[1]), served.proc.pid
        workers = _workers(main)
        nonced = _requests(demo, nonce=True)
        with _connect(base) as sock:
            sock.sendall(_wire_post(nonced[0]) + b"GET /healthz HTTP/1.1\r\nHost: annuaire\r\n\r\n")
            reader = _Reader(sock)
            _check_signed(reader.response()[2], nonced[0])
            assert reader.response()[0] == b"HTTP/1.1 200 OK"
            assert _holder([main, *workers], sock, port) == main
            sock.settimeout(10)
            started = time.monotonic()
            assert sock.recv(1) == b""
            assert time.monotonic() - started < 5, "kept open past idle_timeout"


async def _offering(tmp_path: Path, component: _Signing) -> tuple[socket.socket, Passer,
                                                                   tuple[web.AppRunner, ConnectionGate,
                                                                         asyncio.AbstractServer]]:
    """A serving process's gate whose offers go to a bare ``handover.sock`` the test plays the main process on
    (``_take``, then answering or not as the case needs)."""
    path = str(tmp_path / "handover.sock")
    main = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    main.bind(path)
    main.listen(4)
    passer = Passer(path)
    return main, passer, await _gated(component, {"handover": passer})


async def _take(main: socket.socket) -> tuple[socket.socket, int, bytes]:
    """As the main process: the next offer (its serving process's connection, its number, the bytes carried)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while True:
        try:
            data, ancillary, _, _ = main.recvmsg(MAX_CARRIED + _OFFER.size, socket.CMSG_SPACE(8))
            break
        except BlockingIOError:
            assert loop.time() < deadline, "nothing offered"
            await asyncio.sleep(0.01)
    fds = array.array("i")
    for _, _, payload in ancillary:
        fds.frombytes(payload)
    (fd,) = fds
    return socket.socket(fileno=fd), _OFFER.unpack_from(data)[0], data[_OFFER.size:]


@pytest.mark.parametrize("loss", ["a later offer not sent", "the main process's end closed"])
async def test_an_offer_sent_is_never_taken_back(tmp_path: Path, loss: str) -> None:
    """An offer is sent and the main process has the connection's descriptor, but its answer does not come: sending
    a later offer fails (EMSGSIZE: a unix socket's send buffer smaller than what is carried, as with a low
    net.core.wmem_default), or the main process's end of handover.sock is closed (a read error there). The main
    process may serve that connection: the serving process must not take it back and serve it too (two answers
    to one request on one connection: every later answer on it would be another request's)."""
    component = _Signing({})
    main, passer, (runner, gate, server) = await _offering(tmp_path, component)
    loop = asyncio.get_running_loop()
    try:
        first = await _client(server)
        await loop.sock_sendall(first, _wire(_body(b"first")))
        await _until(lambda: passer.waiting)
        peer, _ = main.accept()
        peer.setblocking(False)
        adopted, number, carried = await _take(peer)  # taken, not answered yet
        assert carried == _wire(_body(b"first"))
        second = await _client(server)
        if loss == "a later offer not sent":
            assert passer.sock is not None
            passer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await loop.sock_sendall(second, _wire(_body(b"second")) + b"x" * 30000)
            await _until(lambda: _body(b"second") in component.signing)  # not sent: answered here
        else:
            peer.close()
            await _until(lambda: passer.sock is None)
        await asyncio.sleep(0.2)
        assert _body(b"first") not in component.signing, "taken back while the main process has it"
        # the main process answers it, and it is the client's only answer
        adopted.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmain")
        (_, _, body), = await _answers(first, 1)
        assert body == b"main"
        if loss == "a later offer not sent":
            peer.send(number.to_bytes(4, "big") + b"\1")  # taken, late: this process's descriptor is closed
            peer.close()
        await asyncio.sleep(0.1)
        # the first connection closed here (counted once its answer said taken), the second one open
        assert gate.open == 1 and gate.handed_over == (1 if loss == "a later offer not sent" else 0)
        assert gate.handover_unanswered == (0 if loss == "a later offer not sent" else 1)
        adopted.close()
        first.close()
        second.close()
    finally:
        server.close()
        await runner.cleanup()
        passer.close()
        main.close()


def test_a_handed_over_connection_keeps_its_close_and_a_client_gone_mid_handover_leaves_no_trace(demo: Path) -> None:
    """``Connection: close`` on the request that is handed over, or the client's end of input right after it:
    answered by the main process, then closed. A client that resets right after its nonce: nothing is left open
    anywhere (the public ``open`` gauge back to 0, counting the main process's share), and nothing is logged
    as a warning (it was, once per such connection)."""
    demo.write_text(demo.read_text().replace("[http]\n", "[http]\nworkers = 2\n", 1))
    with serve(demo) as served:
        base = served.base
        nonced = _requests(demo, nonce=True)
        # handover.sock is reachable by the service's user alone: its directory is 0700
        cmdline = Path(f"/proc/{_workers(served.proc.pid)[0]}/cmdline").read_bytes().split(b"\0")
        sockets = Path(cmdline[cmdline.index(b"--sockets") + 1].decode())
        assert (sockets / "handover.sock").is_socket()
        assert sockets.stat().st_mode & 0o777 == 0o700 and sockets.stat().st_uid == os.getuid()
        for how in ("close", "end of input"):
            with _connect(base) as sock:
                if how == "close":
                    sock.sendall(_wire_post(nonced[0], b"Connection: close"))
                else:
                    sock.sendall(_wire_post(nonced[0]))
                    sock.shutdown(socket.SHUT_WR)
                reader = _Reader(sock)
                _check_signed(reader.response()[2], nonced[0])
                sock.settimeout(5)
                assert sock.recv(1) == b"", how  # closed once answered (idle_timeout is 15 s)
        for _ in range(30):
            sock = _connect(base)
            sock.sendall(_wire_post(nonced[1]))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, at once
        deadline = time.monotonic() + 10
        while True:
            opened = _metric(base, "annuaire_http_connections_open")
            if opened <= 1 or time.monotonic() > deadline:  # the scrape's own connection
                break
            time.sleep(0.2)
        assert opened <= 1
        assert "annuaire_http_connections_handover_unanswered_total 0.0" in http(base + "/metrics")[2].decode()
    # a client that resets right after its nonce is its own doing: no warning (one per connection, at its will)
    warned = [line for line in served.output.splitlines() if '"level":"warning"' in line and "hand-over" in line]
    assert not warned, warned[:3]


def _answered(base: str, request: bytes) -> socket.socket | None:
    """A new connection that got a 200 for ``request`` (kept open), or None (turned away: 503, reset, closed)."""
    sock = _connect(base)
    try:
        sock.sendall(request)
        if _Reader(sock).response()[0] == b"HTTP/1.1 200 OK":
            return sock
    except (OSError, AssertionError):
        pass
    sock.close()
    return None


def test_handed_over_connections_stay_within_max_connections(demo: Path) -> None:
    """``[http] max_connections`` bounds the connections open on the public port: shared out between the serving
    processes, each turning away what is past its share. A connection handed to the main process frees its slot
    in the serving process; the main process's own cap of adopted connections must come out of the same total,
    or clients that each send a nonce and stay hold twice ``max_connections`` (descriptors, memory)."""
    cap = 96
    demo.write_text(demo.read_text().replace("[http]\n", f"[http]\nworkers = 2\nmax_connections = {cap}\n", 1))
    held = _requests(demo)[0]
    with serve(demo) as served:
        base = served.base
        _until_held(base, held)
        nonced = _wire_post(_requests(demo, nonce=True)[0])
        kept = [s for s in (_answered(base, nonced) for _ in range(cap)) if s is not None]
        kept += [s for s in (_answered(base, _wire_post(held)) for _ in range(cap)) if s is not None]
        try:
            assert len(kept) <= cap, f"{len(kept)} connections open and answered, max_connections = {cap}"
        finally:
            for sock in kept:
                sock.close()


async def test_a_peer_of_another_user_is_refused_whatever_the_permissions() -> None:
    """Even with handover.sock's directory and the socket itself open to everyone, a process of another user that
    connects is closed at once: nothing it sends is read, no descriptor it passes is adopted."""
    taken: list[socket.socket] = []

    def adopt(sock: socket.socket, carried: bytes) -> asyncio.Future[object]:
        taken.append(sock)
        return asyncio.ensure_future(asyncio.sleep(0))

    where = Path(tempfile.mkdtemp())  # not under pytest's own directory: that one is 0700
    where.chmod(0o777)
    path = where / "handover.sock"
    adopter = Adopter(str(path), ConnectionGate(cap=8), adopt)
    adopter.start()
    path.chmod(0o777)
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a process of user nobody, holding a connected TCP socket to pass
        code = 1
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            peer.connect(str(path))
            peer.settimeout(3)
            try:
                peer.sendmsg([_OFFER.pack(1, time.monotonic_ns()) + b"carried"],
                             [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [accepted.fileno()]))])
                answer = peer.recv(16)
            except OSError:
                answer = b""
            os.write(write_end, b"closed" if answer == b"" else answer)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        loop = asyncio.get_running_loop()
        said = await loop.run_in_executor(None, os.read, read_end, 64)
        _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
        assert status == 0 and said == b"closed", said
        await asyncio.sleep(0.1)
        assert not taken and adopter.adopted == 0 and not adopter.peers
    finally:
        os.close(read_end)
        adopter.close()
        for s in (client, accepted, server):
            s.close()
        shutil.rmtree(where)


def _flood(sock: socket.socket, most: int, seconds: float) -> int:
    """Bytes the kernel took from ``sock`` within ``seconds`` (at most ``most``), sent as fast as it takes them."""
    sock.setblocking(False)
    chunk, sent, deadline = b"X" * (1 << 20), 0, time.monotonic() + seconds
    while sent < most and time.monotonic() < deadline:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            time.sleep(0.005)
    return sent


@pytest.mark.parametrize("path", ["direct", "aiohttp"])
def test_an_adopted_connection_stays_paused_on_uvloop(path: str) -> None:
    """The main process adopts a connection with ``connect_accepted_socket``; the carried bytes may pause reading
    at once: a live answer in flight with bytes behind it (the direct path), or more pipelined requests than
    aiohttp queues. uvloop starts reading once ``connection_made`` returns, whatever was asked in it: the carried
    bytes taken there, nothing held the client back and everything it sent was buffered in the main process
    (the signer's), without bound (45 MB in 1.5 s here, quadratic copies with it)."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        component = _Signing({})

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(5)
            return web.Response()

        app = web.Application()
        app.router.add_get("/slow", slow)
        runner = web.AppRunner(app)
        await runner.setup()
        assert runner.server is not None
        gate = ConnectionGate(8, 5.0, direct=DirectAnswers(component))
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        for sock in (client, accepted):  # small kernel buffers: what is taken past them is the process's
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        accepted.setblocking(False)
        if path == "direct":  # a live request, and the first byte of what follows
            carried = _wire(_body(b"nonce")) + b"X"
        else:  # more pipelined requests than aiohttp queues (32), to a handler that takes its time
            carried = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" * 40 + b"GET /slow HTTP/1.1\r\nX-Long: "
        try:
            _, gated = await loop.connect_accepted_socket(
                lambda: _Gated(runner.server(), gate, carried), accepted)  # as WorkerPool._adopt
            if path == "direct":
                await _until(lambda: _body(b"nonce") in component.signing)
            sent = await loop.run_in_executor(None, _flood, client, 256 << 20, 1.5)
            assert sent <= 4 << 20, f"{sent} bytes taken from a client whose connection reads nothing more"
            if path == "direct":
                assert isinstance(gated, _Gated)
                assert len(gated.waiting or b"") <= 1 << 20
                component.sign(_body(b"nonce"))
        finally:
            client.close()
            server.close()
            await runner.cleanup()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def test_a_get_nonce_with_head_and_post_behind_it_and_a_trickler_handed_over(demo: Path) -> None:
    """A GET with a nonce hands the connection over with a HEAD and a POST pipelined behind it: three answers in
    order (the HEAD's without a body). A client that then trickles a request one byte at a time is cut at
    ``request_timeout`` from its first byte, in the main process too."""
    demo.write_text(demo.read_text().replace("[http]\n", "[http]\nworkers = 2\nrequest_timeout = 2\n", 1))
    held = _requests(demo)
    with serve(demo) as served:
        base, port, main = served.base, int(served.base.rsplit(":", 1)[1]), served.proc.pid
        for der in held:
            _until_held(base, der)
        workers = _workers(main)
        nonced = _requests(demo, nonce=True)
        head = _wire_get(held[1]).replace(b"GET ", b"HEAD ", 1)
        with _connect(base) as sock:
            sock.sendall(_wire_get(nonced[0]) + head + _wire_post(held[2]))
            reader = _Reader(sock)
            _check_signed(reader.response()[2], nonced[0])
            while b"\r\n\r\n" not in reader.buffer:
                reader._more()
            head_answer, reader.buffer = reader.buffer.split(b"\r\n\r\n", 1)
            assert head_answer.startswith(b"HTTP/1.1 200 OK")
            status, _, body = reader.response()
            assert status == b"HTTP/1.1 200 OK" and _serial(body) == ocsp.load_der_ocsp_request(held[2]).serial_number
            assert _holder([main, *workers], sock, port) == main
            started = time.monotonic()
            sock.settimeout(1)
            with contextlib.suppress(OSError):  # cut: reset, or closed
                for byte in _wire_post(held[0]):
                    sock.send(bytes([byte]))
                    time.sleep(0.3)
                    assert time.monotonic() - started < 6, "still open past request_timeout"
            sock.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
            assert time.monotonic() - started < 6


async def test_a_serving_process_gone_right_after_its_offer_leaves_the_connection_to_the_main_process(
        tmp_path: Path) -> None:
    """A serving process that dies once its offer is sent (its descriptors closed, handover.sock with them): the
    offer, in the main process's queue, holds the client's connection; the main process takes it and serves it,
    and its answer to a peer that is gone costs nothing but a warning."""
    component = _Signing({})
    taken: list[tuple[socket.socket, bytes]] = []

    def adopt(sock: socket.socket, carried: bytes) -> asyncio.Future[object]:
        taken.append((sock, carried))
        return asyncio.ensure_future(asyncio.sleep(0))

    path = str(tmp_path / "handover.sock")
    adopter = Adopter(path, ConnectionGate(cap=8), adopt)
    adopter.start()
    loop = asyncio.get_running_loop()
    assert adopter.sock is not None
    loop.remove_reader(adopter.sock.fileno())  # the main process busy: nothing accepted or read until later
    passer = Passer(path)
    runner, _, server = await _gated(component, {"handover": passer})
    try:
        client = await _client(server)
        await loop.sock_sendall(client, _wire(_body(b"nonce")))
        await _until(lambda: passer.waiting)  # sent, waiting in the main process's queue
        (transit, _), = passer.waiting.values()
        assert transit.gated.transport is not None
        transit.gated.transport.abort()  # the serving process dies: its descriptors are closed
        assert passer.sock is not None
        loop.remove_reader(passer.sock.fileno())
        passer.sock.close()
        passer.sock, passer.waiting = None, {}
        loop.add_reader(adopter.sock.fileno(), adopter._accept)  # the main process gets to it
        await _until(lambda: taken)
        (sock, carried), = taken
        assert carried == _wire(_body(b"nonce"))
        sock.setblocking(True)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmain")
        (_, _, body), = await _answers(client, 1)
        assert body == b"main" and not component.signing
        await _until(lambda: not adopter.peers)
        sock.close()
        client.close()
    finally:
        server.close()
        await runner.cleanup()
        passer.close()
        adopter.close()


async def test_a_connection_offered_when_its_serving_process_stops_is_still_answered(tmp_path: Path) -> None:
    """A serving process told to stop (``close_held``) while one of its connections is offered to the main
    process: that connection waits for the answer. Refused (the main process's share full), its request is
    answered here and the connection closed then; closed at once, the request read and answered by nobody."""
    component = _Signing({})
    main, passer, (runner, gate, server) = await _offering(tmp_path, component)
    loop = asyncio.get_running_loop()
    try:
        client = await _client(server)
        await loop.sock_sendall(client, _wire(_body(b"nonce")))
        await _until(lambda: passer.waiting)
        peer, _ = main.accept()
        peer.setblocking(False)
        offered, number, _ = await _take(peer)
        gate.close_held()  # the serving process stops, its connection offered
        await asyncio.sleep(0.05)
        offered.close()  # refused: the main process closes its descriptor, and says so
        peer.send(number.to_bytes(4, "big") + b"\0")
        await _until(lambda: _body(b"nonce") in component.signing)
        component.sign(_body(b"nonce"))
        (status, _, body), = await _answers(client, 1)
        assert status == b"HTTP/1.1 200 OK" and body == b"L" + _body(b"nonce")
        assert await asyncio.wait_for(loop.sock_recv(client, 1), 3) == b""  # then closed, as stopping wants
        await gate.wait_held(1.0)
        peer.close()
        client.close()
    finally:
        server.close()
        await runner.cleanup()
        passer.close()
        main.close()
