"""``[http] event_loop``: which event loop serves. uvloop (libuv) answers the pre-signed OCSP path
markedly faster than asyncio's own loop (bench/ocsp_answer.py), so it is taken when installed ("auto")."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class EventLoopUnavailable(RuntimeError):
    """``event_loop = "uvloop"`` asked for, and uvloop cannot be imported."""


def loop_factory(choice: str) -> tuple[str, LoopFactory | None]:
    """(the loop's name, its factory for ``asyncio.Runner``; None for asyncio's own)."""
    if choice == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise EventLoopUnavailable(f"uvloop cannot be imported ({exc}): install it, "
                                       'or event_loop = "auto"') from None
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop
