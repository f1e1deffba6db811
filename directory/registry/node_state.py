"""Small per-node state (``node_state``, migration 11): where each node's channels are in the change log.

The revocation-visibility metric observes every status change once per channel: OCSP and CRL cursors
are kept per node (``NAME@NODE``), so changes committed while a node was down are observed when it shows
them, and none twice; the epoch is the change sequence number before which no change is observed by any
channel (set by the first ``annuaire serve``: changes older than the service have no visibility to time).
"""

from __future__ import annotations

from directory.registry.core import RegistryCore

EPOCH = "visibility:epoch"


class NodeState(RegistryCore):
    def node_state_get(self, name: str) -> str | None:
        row = self._conn().execute("SELECT value FROM node_state WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def node_state_set(self, values: dict[str, str]) -> None:
        with self._write() as tx:
            for name, value in values.items():
                tx.execute("DELETE FROM node_state WHERE name = ?", (name,))
                tx.execute("INSERT INTO node_state (name, value) VALUES (?, ?)", (name, value))

    def node_state_init(self, name: str, value: str) -> str:
        """The value of ``name``, set to ``value`` first if it has none (the first caller wins)."""
        with self._write() as tx:
            row = tx.execute("SELECT value FROM node_state WHERE name = ?", (name,)).fetchone()
            if row is not None:
                return str(row[0])
            tx.execute("INSERT INTO node_state (name, value) VALUES (?, ?)", (name, value))
            return value

    def visibility_epoch(self, create: bool = False) -> int | None:
        """Status changes up to this sequence number are never observed (None: no service has run yet);
        ``create``: set it to the latest change now when unset (``annuaire serve`` at start)."""
        if create:
            latest = self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM status_changes").fetchone()[0]
            return int(self.node_state_init(EPOCH, str(int(latest))))
        value = self.node_state_get(EPOCH)
        return int(value) if value is not None else None
