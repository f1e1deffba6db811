"""When a CRL this node serves first lists each status change: the CRL part of the visibility metric.

Per issuer, the node keeps (in the registry's ``node_state``) the newest status change that a CRL it
serves covers (full or delta, ``crls.change_seq``); each change past it is observed once, from its commit
time, when a served CRL covers it: one this node built, one copied from the node that built it, one
``annuaire crl build`` wrote. Changes committed while the node was down are observed when it serves
them after its restart, none twice; a node's first start observes nothing older than itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from directory.registry import Registry


class CrlVisibility:
    def __init__(self, registry: Registry, node: str, observe: Callable[[float], None],
                 clock: Callable[[], float]) -> None:
        self.registry, self.node, self._observe, self._clock = registry, node, observe, clock
        self._cursors: dict[str, int] = {}

    def _key(self, issuer: str) -> str:
        return f"visibility:crl:{issuer}@{self.node}"

    def load(self, issuers: Iterable[str]) -> None:
        """Each issuer's cursor; a node that never ran starts at the latest change (blocking: a thread)."""
        self.registry.visibility_epoch(create=True)
        latest = None
        for issuer in issuers:
            saved = self.registry.node_state_get(self._key(issuer))
            if saved is None:
                latest = self.registry.latest_change() if latest is None else latest
                self.registry.node_state_set({self._key(issuer): str(latest)})
            self._cursors[issuer] = int(saved) if saved is not None else latest  # type: ignore[arg-type]

    def served(self, issuer: str, seq: int) -> int:
        """A CRL this node serves covers the issuer's status changes up to ``seq``: observe those not yet
        observed (blocking: a thread). Returns how many."""
        cursor = self._cursors.get(issuer)
        if cursor is None or seq <= cursor:
            return 0
        now = self._clock()
        times = self.registry.change_times(issuer, cursor, seq)
        self.registry.node_state_set({self._key(issuer): str(seq)})
        self._cursors[issuer] = seq
        for changed_at in times:
            self._observe(max(0.0, now - changed_at))
        return len(times)
