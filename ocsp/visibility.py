"""When OCSP first states each status change, on this node: the OCSP part of the visibility metric.

A change read from the change log is pending until an answer stating it (or a newer status of the same
certificate) is signed: by the change poller, or later by the pre-signing loop when the HSM was away or a
newer change overtook the signature. Each pending change is then observed once, from its commit time.
Where the node is in the change log and what is still pending are kept in the registry (``node_state``),
so changes committed while the service was down are observed when they show after the restart, and none
twice. Pending changes are bounded by the registry's own status changes (operators' writes, never traffic).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

Key = tuple[str, str]  # (issuer, serial_hex)


class VisibilityLedger:
    def __init__(self, cursor: int, pending: list[list[object]], observe: Callable[[float], None],
                 clock: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._seq = cursor  # every change up to here has been read (pending or observed)
        self._pending: dict[Key, list[tuple[int, float]]] = {}
        for seq, issuer, serial_hex, at in pending:
            self._pending.setdefault((str(issuer), str(serial_hex)), []).append((int(seq), float(at)))  # type: ignore[arg-type]
        self._observe = observe
        self._clock = clock
        self.dirty = False

    @classmethod
    def restore(cls, saved: str | None, fresh_cursor: Callable[[], int], observe: Callable[[float], None],
                clock: Callable[[], float]) -> VisibilityLedger:
        """From what ``saved()`` wrote; a node without one starts at ``fresh_cursor()`` (nothing to catch up)."""
        if saved:
            data = json.loads(saved)
            return cls(int(data["seq"]), data.get("pending", []), observe, clock)
        ledger = cls(fresh_cursor(), [], observe, clock)
        ledger.dirty = True
        return ledger

    @property
    def cursor(self) -> int:
        return self._seq

    def read(self, seq: int, issuer: str, serial_hex: str, changed_at: float, served: bool) -> None:
        """A change read from the log (in order); ``served``: OCSP answers for its issuer."""
        with self._lock:
            if served:
                self._pending.setdefault((issuer, serial_hex), []).append((seq, changed_at))
            self._seq = max(self._seq, seq)
            self.dirty = True

    def stated(self, issuer: str, serial_hex: str) -> int:
        """An answer for this certificate was signed after its pending changes were read: observe them."""
        with self._lock:
            changes = self._pending.pop((issuer, serial_hex), None)
            if changes:
                self.dirty = True
        if not changes:
            return 0
        now = self._clock()
        for _, changed_at in changes:
            self._observe(max(0.0, now - changed_at))
        return len(changes)

    def pending(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._pending.values())

    def saved(self) -> str:
        """What to keep in the registry (and clears ``dirty``)."""
        with self._lock:
            self.dirty = False
            rows = sorted([seq, issuer, serial_hex, at] for (issuer, serial_hex), changes in self._pending.items()
                          for seq, at in changes)
            return json.dumps({"seq": self._seq, "pending": rows}, separators=(",", ":"))
