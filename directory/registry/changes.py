"""The status change log (``status_changes``): what CRL deltas, the OCSP poller and the checker follow.

Each revocation or release appends a row in its own transaction; sequence order is commit order.
"""

from __future__ import annotations

from directory.registry.core import RegistryCore

# a status change's time in ms (rows from before migration 5 only have whole seconds)
_CHANGE_MS = "COALESCE(s.at_ms, s.at * 1000)"


class StatusChanges(RegistryCore):
    """Reads of the change log: sequence numbers, the changes after one, their times."""

    def change_seq(self, issuer: str) -> int:
        """Sequence number of the issuer's latest status change (0 when none)."""
        row = self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM status_changes WHERE issuer_id = ?",
                                   (self._issuer_id(issuer),)).fetchone()
        return int(row[0])

    def latest_change(self) -> int:
        return int(self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM status_changes").fetchone()[0])

    def changes_after(self, seq: int, limit: int = 10000) -> list[tuple[int, str, str, float]]:
        """(seq, issuer, serial_hex, time of the change in seconds) of status changes after ``seq``, oldest first."""
        return [(r[0], r[1], r[2], r[3] / 1000) for r in self._conn().execute(
            f"SELECT s.seq, i.name, c.serial_hex, {_CHANGE_MS} FROM status_changes s "
            "JOIN certificates c ON c.id = s.certificate_id JOIN issuers i ON i.id = s.issuer_id "
            "WHERE s.seq > ? ORDER BY s.seq LIMIT ?", (seq, limit))]

    def change_times(self, issuer: str, after_seq: int, up_to_seq: int) -> list[float]:
        """Times (seconds) of ``issuer``'s status changes in ``(after_seq, up_to_seq]``."""
        return [r[0] / 1000 for r in self._conn().execute(
            f"SELECT {_CHANGE_MS} FROM status_changes s WHERE s.issuer_id = ? AND s.seq > ? AND s.seq <= ?",
            (self._issuer_id(issuer), after_seq, up_to_seq))]
