"""The listening sockets behind a ``ConnectionGate`` (``directory/service/listener.py``): the public one (TCP,
shared by the serving processes with SO_REUSEPORT), the main process's unix socket for them, and the check
that nothing else listens on the public port.

asyncio accepts up to its ``backlog`` argument of connections per readiness event and hands each to a task
before any protocol sees it: with the usual 1024 a flood could take 1024 descriptors in one go, past any
budget. The listening socket is therefore handed to asyncio with ``ACCEPT_BURST`` (what one event may
accept, counted in the descriptor budget) and then given its real kernel queue (``LISTEN_QUEUE``).
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from directory.service.listener import ConnectionGate, _Gated

ACCEPT_BURST = 32  # connections asyncio may accept in one go, before the gate sees them
LISTEN_QUEUE = 1024  # the kernel's queue of connections not yet accepted (no descriptor of ours)


async def listen(runner: web.AppRunner, host: str, port: int, gate: ConnectionGate,
                 reuse_port: bool = False) -> asyncio.AbstractServer:
    """Serve ``runner`` (already set up) on ``host:port`` behind ``gate`` (TLS when ``gate.tls``); close the
    returned server before ``runner.cleanup()``. ``reuse_port``: the serving processes of ``[http] workers``
    each listen on the same port (SO_REUSEPORT: the kernel spreads new connections over them)."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        listener = await loop.create_server(lambda: _Gated(server(), gate), sock=sock, backlog=ACCEPT_BURST)
    except BaseException:
        sock.close()
        raise
    sock.listen(LISTEN_QUEUE)  # the same socket: a longer kernel queue, asyncio's burst unchanged
    return listener


def port_free(host: str, port: int) -> None:
    """Raise OSError when something already listens on ``host:port``: the serving processes bind it with
    SO_REUSEPORT, which another instance of the service (same user) would silently share; a bind without
    it fails against any listener, as a single process's bind does."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)


async def listen_unix(runner: web.AppRunner, path: str, gate: ConnectionGate) -> asyncio.AbstractServer:
    """Serve ``runner`` on a unix socket behind ``gate``: the main process's side of ``[http] workers``
    (requests the serving processes hand over); the socket's directory keeps other users out. The same accept
    burst as the public listener's (``limits.internal`` counts it), then the real kernel queue."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        listener = await asyncio.get_running_loop().create_unix_server(lambda: _Gated(server(), gate), sock=sock,
                                                                       backlog=ACCEPT_BURST)
    except BaseException:
        sock.close()
        raise
    sock.listen(LISTEN_QUEUE)  # the same socket: a longer kernel queue, asyncio's burst unchanged
    return listener
