"""The LDAP outbox: the directory learns of every change, in the change's own transaction.

The sync takes due rows, writes the entries they map to, then settles them: rows written are dropped,
rows of entries the directory refused stay as dead letters (``dead_letters.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from directory.registry import dead_letters
from directory.registry.backends import Conn
from directory.registry.core import RegistryCore, chunks
from directory.registry.dead_letters import LdapRefusal
from directory.registry.node_state import EPOCH


class LdapOutbox(RegistryCore):
    """Outbox rows: enqueued by every write, taken and settled by the LDAP sync."""

    def _ldap_enqueue(self, tx: Conn, issuer_id: int | None, certificate_id: int | None,
                      now: int, change: tuple[int, int] | None = None) -> None:
        """In the transaction of the change itself: the directory learns of every change, or of none.

        A status change's row carries its sequence number and its time in milliseconds (the change log's
        own): its time to the directory is a metric, observed once per change like the other channels'.
        """
        if self.ldap_outbox_enabled:
            seq, ms = change if change is not None else (None, None)
            tx.execute("INSERT INTO ldap_outbox (issuer_id, certificate_id, enqueued_at, enqueued_ms, change_seq) "
                       "VALUES (?, ?, ?, ?, ?)", (issuer_id, certificate_id, now, ms, seq))

    def ldap_outbox(self, limit: int, now: int | None = None) -> list[tuple[int, str, int | None]]:
        """Oldest pending (id, issuer, certificate id or None for the CA entry); with ``now``, only the rows
        due (dead letters wait for their retry time)."""
        due = "" if now is None else "WHERE o.next_attempt_at IS NULL OR o.next_attempt_at <= ? "
        return [tuple(r) for r in self._conn().execute(  # type: ignore[misc]
            "SELECT o.id, i.name, o.certificate_id FROM ldap_outbox o JOIN issuers i ON i.id = o.issuer_id "
            f"{due}ORDER BY o.id LIMIT ?", (limit,) if now is None else (now, limit))]

    def ldap_outbox_due(self, now: int) -> bool:
        """Whether a row waits that is not a dead letter waiting for its retry time."""
        return self._conn().execute("SELECT 1 FROM ldap_outbox WHERE next_attempt_at IS NULL OR next_attempt_at <= ? "
                                    "LIMIT 1", (now,)).fetchone() is not None

    def ldap_outbox_stats(self) -> tuple[int, int, int | None]:
        """(depth, highest id, enqueue time of the oldest row)."""
        depth, top, oldest = self._conn().execute(
            "SELECT COUNT(*), COALESCE(MAX(id), 0), MIN(enqueued_at) FROM ldap_outbox").fetchone()
        return int(depth), int(top), oldest

    def ldap_outbox_times(self, ids: Iterable[int] = (), up_to: int | None = None) -> list[float]:
        """Times (seconds) of the status changes among outbox rows about to be settled (visibility latency)."""
        conn = self._conn()
        if up_to is not None:
            rows = conn.execute("SELECT enqueued_ms FROM ldap_outbox WHERE id <= ? AND enqueued_ms IS NOT NULL",
                                (up_to,)).fetchall()
        else:
            wanted = list(ids)
            rows = [r for chunk in chunks(wanted, 500) for r in conn.execute(
                f"SELECT enqueued_ms FROM ldap_outbox WHERE id IN ({','.join('?' * len(chunk))}) "
                "AND enqueued_ms IS NOT NULL", chunk).fetchall()]
        return [ms / 1000 for (ms,) in rows]

    def publication_facts(self, issuer: str, serial_hex: str) -> dict[str, Any] | None:
        """What the admin API reports about a certificate's publication: last status change, directory entry."""
        conn = self._conn()
        row = conn.execute("SELECT id FROM certificates WHERE issuer_id = ? AND serial_hex = ?",
                           (self._issuer_id(issuer), serial_hex)).fetchone()
        if row is None:
            return None
        cid = row[0]
        last_change = conn.execute("SELECT MAX(seq) FROM status_changes WHERE certificate_id = ?", (cid,)).fetchone()[0]
        projection = conn.execute("SELECT layout, dn FROM ldap_projection WHERE certificate_id = ?", (cid,)).fetchone()
        pending = conn.execute("SELECT COUNT(*) FROM ldap_outbox WHERE certificate_id = ?", (cid,)).fetchone()[0]
        refused = conn.execute("SELECT last_error, attempts, next_attempt_at FROM ldap_outbox WHERE certificate_id = ? "
                               "AND last_error IS NOT NULL ORDER BY id DESC LIMIT 1", (cid,)).fetchone()
        return {"last_change_seq": last_change, "ldap_layout": projection[0] if projection else None,
                "ldap_dn": projection[1] if projection else None, "ldap_pending": int(pending),
                "ldap_refused": {"reason": refused[0], "attempts": int(refused[1]), "next_attempt_at": refused[2]}
                if refused else None}

    def ldap_outbox_settle(self, layout: str, now: int, ids: Iterable[int] = (), up_to: int | None = None,
                           refusals: Sequence[LdapRefusal] = ()) -> list[float]:
        """End of a pass over the rows ``ids`` (or every row up to ``up_to``): drop those written, keep those
        of the entries the directory refused as dead letters (``dead_letters.settle``). Returns the times
        (seconds) of the status changes among the rows dropped (visibility latency), but those from before
        the visibility epoch (``node_state``)."""
        with self._write() as tx:
            epoch = tx.execute("SELECT value FROM node_state WHERE name = ?", (EPOCH,)).fetchone()
            changes = dead_letters.settle(tx, layout, now, set(ids), up_to, refusals, self._issuer_id)
        after = int(epoch[0]) if epoch is not None else 0
        return [at for seq, at in changes if seq is None or seq > after]

    def ldap_refused(self, limit: int = 5) -> tuple[int, list[dict[str, Any]]]:
        """Dead letters: how many outbox rows the directory refused, and the oldest few (what, why, when next)."""
        return dead_letters.refused(self._conn(), limit)

    def ldap_outbox_done(self, ids: Iterable[int] = (), up_to: int | None = None) -> None:
        """Drop applied rows: the listed ones, or every row up to ``up_to`` (a full reconcile covered them)."""
        with self._write() as tx:
            if up_to is not None:
                tx.execute("DELETE FROM ldap_outbox WHERE id <= ?", (up_to,))
            tx.executemany("DELETE FROM ldap_outbox WHERE id = ?", [(i,) for i in ids])
