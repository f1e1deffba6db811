"""The public listener: aiohttp's request handler behind a cap on open connections.

aiohttp itself closes a connection whose request headers are not complete within its keep-alive timeout
(slow clients, slowloris) and refuses over-long request lines and header fields (400/431); what it does
not do is bound the number of connections, so a flood of idle sockets could exhaust file descriptors and
memory. Past ``cap`` open connections a new one gets a minimal ``503`` with ``Retry-After`` and is closed
before any parsing.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

from aiohttp import web

REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
           b"Connection: close\r\n\r\n")


@dataclass
class ConnectionGate:
    cap: int
    open: int = 0
    refused: int = 0


class _Gated(asyncio.Protocol):
    """Forwards to aiohttp's protocol, or turns the connection away when the gate is full."""

    def __init__(self, inner: Any, gate: ConnectionGate) -> None:
        self.inner = inner
        self.gate = gate
        self.admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.gate.open >= self.gate.cap:
            self.gate.refused += 1
            assert isinstance(transport, asyncio.Transport)
            transport.write(REFUSAL)
            # closed once the client has read it and hung up, or after a second: closing at once with the
            # request still unread would reset the connection before the client sees the 503
            self.closer = asyncio.get_running_loop().call_later(1.0, transport.close)
            self.transport = transport
            return
        self.admitted = True
        self.gate.open += 1
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if not self.admitted:
            self.transport.close()
            return None
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.gate.open -= 1
            self.inner.connection_lost(exc)
        else:
            self.closer.cancel()


async def listen(runner: web.AppRunner, host: str, port: int, gate: ConnectionGate,
                 ssl_context: ssl.SSLContext | None = None) -> asyncio.AbstractServer:
    """Serve ``runner`` (already set up) on ``host:port`` behind ``gate``; close the returned server
    before ``runner.cleanup()``."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Gated(server(), gate), host, port, ssl=ssl_context,
                                    reuse_address=True, backlog=1024)
