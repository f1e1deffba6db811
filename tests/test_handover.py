"""``[http] workers = 2``: a client connection about to need a live OCSP answer (a nonce) is handed by its serving
process to the main process (``directory/service/handover.py``), which answers it from then on, in order; past
the main process's cap it stays with the serving process (livewire). The real service, SoftHSM2, sockets."""

from __future__ import annotations

import array
import asyncio
import datetime
import os
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp

from directory.service.handover import _OFFER, Adopter, Passer
from directory.service.listener import ConnectionGate
from tests.served import http, serve
from tests.test_ocsp_direct import (
    _answers,
    _body,
    _client,
    _connect,
    _gated,
    _Reader,
    _requests,
    _shape,
    _Signing,
    _until,
    _until_held,
    _wire,
    _wire_get,
    _wire_post,
)
from tests.test_workers import _workers


def _metric(base: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", http(base + "/metrics")[2].decode(), re.M)
    return float(found.group(1)) if found else 0.0


def _holder(pids: list[int], sock: socket.socket, port: int) -> int | None:
    """Which of ``pids`` holds the service's side of ``sock``'s connection."""
    client_port = sock.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and int(fields[2].split(":")[1], 16) == client_port:
            inode = fields[9]
    assert inode is not None
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def _check_signed(body: bytes, nonced: bytes) -> None:
    """A good answer echoing the request's nonce, signed by the responder certificate it carries."""
    parsed = ocsp.load_der_ocsp_response(body)
    assert parsed.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert parsed.certificate_status == ocsp.OCSPCertStatus.GOOD
    asked = ocsp.load_der_ocsp_request(nonced)
    assert parsed.serial_number == asked.serial_number
    nonce = asked.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    assert parsed.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    key = parsed.certificates[0].public_key()
    assert parsed.signature_hash_algorithm is not None
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(parsed.signature, parsed.tbs_response_bytes, padding.PKCS1v15(), parsed.signature_hash_algorithm)
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(parsed.signature, parsed.tbs_response_bytes, ec.ECDSA(parsed.signature_hash_algorithm))


def _serial(body: bytes) -> int:
    return ocsp.load_der_ocsp_response(body).serial_number


HANDED = "annuaire_http_connections_handed_over_total"
REFUSED = "annuaire_http_connections_handover_refused_total"


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_nonce_connections_are_handed_to_the_main_process(demo: Path, loop: str) -> None:
    demo.write_text(demo.read_text().replace("[http]\n", f"[http]\nworkers = 2\nevent_loop = \"{loop}\"\n", 1))
    held = _requests(demo)
    serials = [ocsp.load_der_ocsp_request(der).serial_number for der in held]
    with serve(demo) as served:
        base, port, main = served.base, int(served.base.rsplit(":", 1)[1]), served.proc.pid
        for der in held:
            _until_held(base, der)
        workers = _workers(main)
        with _connect(base) as sock:  # a held answer from a serving process: its headers, to compare
            sock.sendall(_wire_post(held[0]))
            reference = _Reader(sock).response()
            assert _holder(workers, sock, port) in workers
        assert _metric(base, HANDED) == 0

        # a nonce: answered (signed, nonce echoed), and the connection is the main process's from then on,
        # held answers included
        nonced = _requests(demo, nonce=True)
        with _connect(base) as sock:
            reader = _Reader(sock)
            sock.sendall(_wire_post(nonced[0]))
            status, fields, body = reader.response()
            assert status == b"HTTP/1.1 200 OK"
            _check_signed(body, nonced[0])
            assert _holder([main, *workers], sock, port) == main
            for der in (held[1], nonced[1], held[2]):
                sock.sendall(_wire_post(der))
                status, fields, body = reader.response()
                assert status == b"HTTP/1.1 200 OK" and _serial(body) == ocsp.load_der_ocsp_request(der).serial_number
            assert _shape(fields) == _shape(reference[1])
        assert _metric(base, HANDED) == 1

        # pipelined held, nonce, held (GET), held in one write: handed over at the nonce, the rest carried along;
        # four answers in order, the held ones with the same headers as a serving process's
        nonced = _requests(demo, nonce=True)
        with _connect(base) as sock:
            sock.sendall(_wire_post(held[0]) + _wire_post(nonced[0]) + _wire_get(held[1])
                         + _wire_post(held[2], b"X-Request-ID: mine-8"))
            reader = _Reader(sock)
            answers = [reader.response() for _ in range(4)]
            assert _holder([main, *workers], sock, port) == main
        assert [_serial(body) for _, _, body in answers] == [serials[0], serials[0], serials[1], serials[2]]
        _check_signed(answers[1][2], nonced[0])
        assert _shape(answers[0][1]) == _shape(answers[3][1]) == _shape(reference[1])
        assert dict(answers[3][1])["X-Request-ID"] == "mine-8"
        assert _metric(base, HANDED) == 2

        # a nonce and the first half of a held request in one write, the rest after the handover: both answered
        nonced = _requests(demo, nonce=True)
        with _connect(base) as sock:
            second = _wire_post(held[1])
            sock.sendall(_wire_post(nonced[1]) + second[:40])
            reader = _Reader(sock)
            _check_signed(reader.response()[2], nonced[1])
            time.sleep(0.3)
            sock.sendall(second[40:])
            status, _, body = reader.response()
            assert status == b"HTTP/1.1 200 OK" and _serial(body) == serials[1]
            assert _holder([main, *workers], sock, port) == main
        assert _metric(base, HANDED) == 3

        # openssl with a nonce (its HTTP/1.0 request is aiohttp's: answered over livewire): verified, nonce echoed
        d = demo.parent
        out = subprocess.run(["openssl", "ocsp", "-issuer", str(d / "ca" / "ac-personnes.pem"), "-serial",
                              str(serials[0]), "-url", base + "/ocsp", "-CAfile", str(d / "ca" / "chain.pem")],
                             capture_output=True, text=True, timeout=30)
        said = out.stdout + out.stderr
        assert "Response verify OK" in said and ": good" in said and "WARNING: no nonce" not in said, said
        assert _metric(base, REFUSED) == 0
        kept = _connect(base)  # handed over and kept alive when the service stops
        kept.sendall(_wire_post(_requests(demo, nonce=True)[0]))
        _Reader(kept).response()
    with kept:  # closed by the stop, as the main process's own connections
        kept.settimeout(5)
        assert kept.recv(1) == b""


def test_past_the_main_process_cap_a_connection_stays_with_its_serving_process(demo: Path) -> None:
    demo.write_text(demo.read_text().replace("[http]\n", "[http]\nworkers = 2\nmax_connections = 1\n", 1))
    with serve(demo) as served:
        base, port, main = served.base, int(served.base.rsplit(":", 1)[1]), served.proc.pid
        workers = _workers(main)
        nonced = _requests(demo, nonce=True)
        with _connect(base) as first, _connect(base) as second:
            first.sendall(_wire_post(nonced[0]))
            _check_signed(_Reader(first).response()[2], nonced[0])
            assert _holder([main, *workers], first, port) == main  # the main process's one connection
            second.sendall(_wire_post(nonced[1]))
            _check_signed(_Reader(second).response()[2], nonced[1])  # over livewire
            assert _holder([main, *workers], second, port) in workers
            second.sendall(_wire_post(nonced[2]))  # not offered again: answered there
            _check_signed(_Reader(second).response()[2], nonced[2])
            assert _metric(base, HANDED) == 1 and _metric(base, REFUSED) == 1


# -- what the main process accepts ------------------------------------------------------------------------


async def _offer(peer: socket.socket, fds: list[int], data: bytes | None = None) -> bytes:
    """As a serving process: offer ``fds`` (number 7, sent now, ``carried``); the main process's answer."""
    data = _OFFER.pack(7, time.monotonic_ns()) + b"carried" if data is None else data
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    peer.sendmsg([data], ancillary)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while loop.time() < deadline:
        try:
            return peer.recv(16)
        except BlockingIOError:
            await asyncio.sleep(0.01)
    raise AssertionError("no answer")


async def test_only_one_connected_stream_socket_is_adopted(tmp_path: Path) -> None:
    adopted: list[tuple[socket.socket, bytes]] = []

    def adopt(sock: socket.socket, carried: bytes) -> asyncio.Future[object]:
        adopted.append((sock, carried))
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    gate = ConnectionGate(cap=1)
    adopter = Adopter(str(tmp_path / "h.sock"), gate, adopt)
    adopter.start()
    server = socket.create_server(("127.0.0.1", 0))
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    peer.connect(str(tmp_path / "h.sock"))
    peer.setblocking(False)
    await asyncio.sleep(0.05)
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    read_end, write_end = os.pipe()
    unix_a, unix_b = socket.socketpair()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    loose = socket.socket()
    others = [read_end, unix_a.fileno(), udp.fileno(), loose.fileno(), server.fileno()]
    opened = len(os.listdir("/proc/self/fd"))
    try:
        refused = b"\0\0\0\7\0"
        assert await _offer(peer, []) == refused  # no descriptor
        assert await _offer(peer, [accepted.fileno(), accepted.fileno()]) == refused  # two
        for fd in others:  # a pipe, a unix socket, a datagram one, one not connected, a listening one
            assert await _offer(peer, [fd]) == refused, fd
        assert len(os.listdir("/proc/self/fd")) == opened  # every descriptor received was closed
        assert not adopted
        assert await _offer(peer, [accepted.fileno()]) == b"\0\0\0\7\1"
        (sock, carried), = adopted
        assert carried == b"carried" and sock.getpeername() == client.getsockname()
        gate.open = 1  # the cap reached: refused, the descriptor closed
        assert await _offer(peer, [accepted.fileno()]) == refused and len(adopted) == 1
        assert adopter.adopted == 1 and adopter.refused == 1
        sock.close()
    finally:
        adopter.close()
        for s in (peer, client, accepted, server, unix_a, unix_b, udp, loose):
            s.close()
        os.close(read_end)
        os.close(write_end)


async def test_a_tls_connection_is_never_offered(tmp_path: Path) -> None:
    """TLS connections have no direct path: a nonce request on one is aiohttp's, never handed over."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    component = _Signing({})
    taken: list[tuple[socket.socket, bytes]] = []

    def adopt(sock: socket.socket, carried: bytes) -> asyncio.Future[object]:
        taken.append((sock, carried))
        return asyncio.ensure_future(asyncio.sleep(0))

    adopter = Adopter(str(tmp_path / "h.sock"), ConnectionGate(cap=8), adopt)
    adopter.start()
    passer = Passer(str(tmp_path / "h.sock"))
    runner, gate, server = await _gated(component, {"tls": server_context, "handover": passer})
    plain_runner, plain_gate, plain_server = await _gated(component, {"handover": passer})
    try:
        # the same request on a plain listener is offered, and taken (carried along)
        plain = await _client(plain_server)
        await asyncio.get_running_loop().sock_sendall(plain, _wire(_body(b"nonce")))
        await _until(lambda: plain_gate.handed_over == 1)
        assert adopter.adopted == 1 and taken[0][1] == _wire(_body(b"nonce")) and not component.signing
        taken[0][0].close()
        plain.close()
        client_context = ssl.create_default_context()
        client_context.check_hostname = False
        client_context.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2], ssl=client_context)
        writer.write(_wire(_body(b"nonce")))
        status = await asyncio.wait_for(reader.readline(), 5)
        assert status.startswith(b"HTTP/1.1 404"), status  # aiohttp's: no OCSP route in this application
        assert adopter.adopted == 1 and adopter.refused == 0 and not passer.waiting and not component.signing
        assert gate.handed_over == 0
        writer.close()
    finally:
        server.close()
        plain_server.close()
        await runner.cleanup()
        await plain_runner.cleanup()
        passer.close()
        adopter.close()


async def test_a_connection_not_sent_stays_and_is_answered_here(tmp_path: Path) -> None:
    """No main process listening (restarting, stopping): the offer is not sent, the request is signed here (what
    ``live_future`` does in a serving process: livewire) and answered, and the next live one is too."""
    component = _Signing({})
    passer = Passer(str(tmp_path / "nobody.sock"))
    runner, gate, server = await _gated(component, {"handover": passer})
    try:
        sock = await _client(server)
        loop = asyncio.get_running_loop()
        for tag in (b"one", b"two"):
            await loop.sock_sendall(sock, _wire(_body(tag)))
            await _until(lambda tag=tag: _body(tag) in component.signing)  # type: ignore[misc]
            component.sign(_body(tag))
            (status, _, body), = await _answers(sock, 1)
            assert status == b"HTTP/1.1 200 OK" and body == b"L" + _body(tag)
        assert gate.handed_over == 0 and gate.open == 1
        sock.close()
    finally:
        server.close()
        await runner.cleanup()
        passer.close()
