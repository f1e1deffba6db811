"""``[http] event_loop``: which event loop serves. uvloop (libuv) answers the pre-signed OCSP path faster
than asyncio's own loop (bench/ocsp_answer.py), so "auto" takes it when installed, except with a TLS
listener: the gates start TLS themselves once a connection is admitted (``loop.start_tls``), and uvloop
hands the client's first handshake bytes to the plain protocol before start_tls takes over, leaving about
one handshake in two waiting until the deadline cuts it (reproduced with uvloop 0.23)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class EventLoopUnavailable(RuntimeError):
    """``event_loop = "uvloop"`` asked for, and uvloop cannot be imported or cannot serve this configuration."""


def loop_factory(choice: str, tls_listener: bool = False) -> tuple[str, LoopFactory | None]:
    """(the loop's name, its factory for ``asyncio.Runner``; None for asyncio's own)."""
    if choice == "asyncio" or (choice == "auto" and tls_listener):
        return "asyncio", None
    if tls_listener:
        raise EventLoopUnavailable("uvloop cannot serve a TLS listener here (the admin listener has "
                                   'tls_certificate): event_loop = "auto" or "asyncio"')
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise EventLoopUnavailable(f"uvloop cannot be imported ({exc}): install it, "
                                       'or event_loop = "auto"') from None
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop
