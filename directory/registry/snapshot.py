"""The consistent read view a CRL build takes its entries from: one read transaction of one issuer.

Apart from ``crls`` (numbers and records) and importing only the standard library (``der`` for a delta's
entries): `crl build` opens one on a connection of its own while the command is still starting
(``crl.readahead``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Conn = Any  # a connection of the backend: ``execute(sql, params)``
# every SQLite connection of the registry (after journal_mode=WAL): a commit survives a power cut
SQLITE_PRAGMAS = ("PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON", "PRAGMA busy_timeout=30000")
MIN_RANGE = 1 << 14  # certificate ids in one chunk of a CRL build, at least (a power of two)


class CrlSnapshot:
    """A consistent read view of one issuer's revocations (one read transaction) for building CRLs."""

    def __init__(self, conn: Conn, issuer_id: int) -> None:
        self.conn = conn
        self.issuer_id = issuer_id
        row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM status_changes WHERE issuer_id = ?",
                           (issuer_id,)).fetchone()
        self.change_seq: int = int(row[0])

    def full_entries(self, cutoff: int | None, partition: tuple[int, int] | None = None,
                     chunks: int = 20) -> tuple[int, list[bytes]]:
        """(count, DER chunks) of a complete CRL's entries (``full_entry_runs`` gathered)."""
        total, out = 0, []
        for count, blob in self.full_entry_runs(cutoff, partition, chunks):
            total += count
            out.append(blob)
        return total, out

    def full_entry_runs(self, cutoff: int | None, partition: tuple[int, int] | None = None,
                        chunks: int = 20) -> Iterator[tuple[int, bytes]]:
        """(count, DER) of each non-empty chunk of a complete CRL's entries, in order, concatenated inside SQLite.

        The entries were encoded when each certificate was revoked; here they are only concatenated, in
        at most about ``chunks`` ranges of certificate ids (bounded transient memory), with no per-entry
        Python object at all: the cost that makes a million entries take well under a second.
        The ranges are aligned on a power of two (at least ``MIN_RANGE`` ids) that only changes when the
        span of ids doubles: a revocation changes the bytes of one chunk, and the self-check of the next
        build recognises the others as already walked (``entrycheck.WalkCache``).
        ``cutoff`` drops certificates that expired before it (unknown expiry is kept).
        """
        # one aggregate each: SQLite answers a lone MIN or MAX from the primary key, both together by a scan
        low, high = self.conn.execute(
            "SELECT (SELECT MIN(certificate_id) FROM crl_entries WHERE issuer_id = ?), "
            "(SELECT MAX(certificate_id) FROM crl_entries WHERE issuer_id = ?)", (self.issuer_id,) * 2).fetchone()
        if low is None:
            return
        sql = ("SELECT COUNT(*), CAST(group_concat(entry_der, '') AS BLOB) FROM crl_entries "
               "WHERE issuer_id = ? AND certificate_id >= ? AND certificate_id < ?")
        extra: list[Any] = []
        if cutoff is not None:
            sql += " AND (not_after IS NULL OR not_after >= ?)"
            extra.append(cutoff)
        if partition is not None:
            sql += " AND serial_low % ? = ?"
            extra.extend(partition)
        span = MIN_RANGE
        while (high - low) // span >= chunks:
            span *= 2
        for start in range(low - low % span, high + 1, span):
            count, blob = self.conn.execute(sql, [self.issuer_id, start, start + span, *extra]).fetchone()
            if count:
                yield count, bytes(blob)

    def delta_entries(self, since_seq: int, removal_time: int) -> list[bytes]:
        """Entries changed after ``since_seq``: current entries, plus removeFromCRL for released holds."""
        from directory import der  # (its dataclass and datetime not before a full CRL's read begins)

        rows = self.conn.execute(
            "SELECT c.id, c.serial_hex, c.status, e.entry_der FROM certificates c "
            "LEFT JOIN crl_entries e ON e.issuer_id = c.issuer_id AND e.certificate_id = c.id "
            "WHERE c.id IN (SELECT certificate_id FROM status_changes WHERE issuer_id = ? AND seq > ? AND seq <= ?) "
            "ORDER BY c.id", (self.issuer_id, since_seq, self.change_seq)).fetchall()
        out: list[bytes] = []
        for cid, serial_hex, status, entry in rows:
            if status != "good":
                out.append(bytes(entry))
                continue
            was = self.conn.execute("SELECT status FROM status_changes WHERE certificate_id = ? AND seq <= ? "
                                     "ORDER BY seq DESC LIMIT 1", (cid, since_seq)).fetchone()
            if was is not None and was[0] == "on-hold":
                out.append(der.revoked_entry(int(serial_hex, 16), removal_time, der.REMOVE_FROM_CRL))
        return out
