"""A bounded pool of logged-in token sessions.

Each permit to use the token carries the session it last used (or none yet, opened on first use), so
the number of permits is at once the bound on concurrent signatures and on the sessions we hold: it
starts at ``max_concurrent`` and is lowered to the token's own session limit once that is known.
A session is used by one thread at a time, whichever thread holds its permit.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from directory.hsm.cryptoki import SignBuffer
from directory.hsm.errors import HsmUnavailable


@dataclass(eq=False)
class PooledSession:
    """A python-pkcs11 session (logged in), the slot it is on, the keys found through it, and the buffer its
    raw signatures are written to (``HsmSigner``'s direct path)."""

    generation: int
    session: Any
    slot_id: int
    keys: dict[str, Any] = field(default_factory=dict)
    buffer: SignBuffer = field(default_factory=SignBuffer)

    def __post_init__(self) -> None:
        self.handle: int = self.session.handle  # read once: a Cython property otherwise


class SessionPool:
    def __init__(self, size: int) -> None:
        self._mutex = threading.Lock()  # taken directly (its C context manager) on the hot path
        self._cond = threading.Condition(self._mutex)
        self._idle: list[PooledSession | None] = [None] * size
        self._lent = 0
        self.size = size

    def take(self, timeout: float) -> PooledSession | None:
        """A permit: the session it carries, or None (open one). Waits at most ``timeout`` seconds."""
        with self._mutex:
            if not self._idle and not self._cond.wait_for(lambda: bool(self._idle), timeout):
                raise HsmUnavailable(f"all {self.size} HSM sessions stayed busy for {timeout:.0f} s")
            self._lent += 1
            return self._idle.pop()  # last in, first out: the warmest session

    def give(self, entry: PooledSession | None) -> PooledSession | None:
        """Return a permit; returns the session back to the caller to close when the pool has shrunk."""
        with self._mutex:
            self._lent -= 1
            if self._lent + len(self._idle) >= self.size:
                return entry
            self._idle.append(entry)
            self._cond.notify()
            return None

    def resize(self, size: int) -> list[PooledSession]:
        """Lower (or raise) the number of permits; returns idle sessions to close now."""
        with self._cond:
            self.size = size
            dropped: list[PooledSession] = []
            while self._idle and self._lent + len(self._idle) > size:
                entry = self._idle.pop(0)
                if entry is not None:
                    dropped.append(entry)
            while self._lent + len(self._idle) < size:
                self._idle.append(None)
                self._cond.notify()
            return dropped

    def drain(self) -> list[PooledSession]:
        """Every idle session (at shutdown)."""
        with self._cond:
            sessions = [e for e in self._idle if e is not None]
            self._idle = [None] * len(self._idle)
            return sessions
