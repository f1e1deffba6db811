"""Adversarial cases of the hand-over of a client connection to the main process (``directory/service/handover.py``):
what a client or the kernel can make of it. The real service and SoftHSM2, or real sockets and gates."""

from __future__ import annotations

import time
from pathlib import Path

from tests.served import serve
from tests.test_handover import _check_signed, _holder
from tests.test_ocsp_direct import _connect, _Reader, _requests, _wire_post
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
