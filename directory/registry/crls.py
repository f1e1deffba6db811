"""CRL numbering and records; the allocation of a number inside the snapshot a build read (``snapshot``).

A number is allocated and recorded ``building`` in one transaction and never reused (a failed build
burns it); with several nodes the published CRL's bytes are kept too, for the other nodes to copy.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from directory.refusal import Refused
from directory.registry.audit import AuditTrail
from directory.registry.backends import Conn
from directory.registry.ldap_outbox import LdapOutbox
from directory.registry.snapshot import CrlSnapshot


@dataclass(frozen=True)
class CrlRecord:
    """One CRL number as recorded in the registry (allocated before the CRL is built)."""

    issuer: str
    scope: str
    kind: str
    number: int
    base_number: int | None
    this_update: int
    next_update: int
    change_seq: int
    state: str
    entries: int | None
    size: int | None
    sha256: str | None
    error: str | None


class CrlNumberRefused(Refused):
    """A CRL handed in whose number does not go past the numbers already used for its sequence."""

_CRL_COLUMNS = ("i.name, r.scope, r.kind, r.number, r.base_number, r.this_update, r.next_update, r.change_seq, "
                "r.state, r.entries, r.size, r.sha256, r.error")


class Crls(AuditTrail, LdapOutbox):
    """CRL numbers (per issuer and scope), build records, published bytes, snapshots."""

    def crl_allocate(self, issuer: str, scope: str, kind: str, this_update: int, next_update: int,
                     base_number: int | None = None) -> CrlRecord:
        """Allocate the next number of ``scope`` and record the CRL as 'building', in one transaction.

        The number is never reused, even when the build then fails or the process dies: it is burnt.
        """
        issuer_id = self._issuer_id(issuer)
        with self._write() as tx:
            number = self._allocate(tx, issuer_id, scope, kind, this_update, next_update, base_number)
        return CrlRecord(issuer, scope, kind, number, base_number, this_update, next_update, 0, "building",
                         None, None, None, None)

    def crl_allocate_in(self, snapshot: CrlSnapshot, issuer: str, kind: str, this_update: int,
                        next_update: int) -> CrlRecord | None:
        """``crl_allocate`` of the main scope written in ``snapshot``'s own transaction (SQLite), which ends
        with it: the number and the entries read are one view. None, and nothing written, when another
        connection committed since the snapshot began (SQLite refuses to write on a stale read: its entries
        may be out of date) or holds the write lock now: the caller allocates as usual and reads again."""
        import sqlite3

        if snapshot.issuer_id != self._issuer_id(issuer) or self.backend.name != "sqlite":
            raise ValueError(f"not a snapshot of {issuer} in this SQLite registry")
        conn = snapshot.conn
        try:
            number = self._allocate(conn, snapshot.issuer_id, "main", kind, this_update, next_update, None)
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
            conn.execute("ROLLBACK")
            return None
        return CrlRecord(issuer, "main", kind, number, None, this_update, next_update, 0, "building",
                         None, None, None, None)

    def _allocate(self, tx: Conn, issuer_id: int, scope: str, kind: str, this_update: int, next_update: int,
                  base_number: int | None) -> int:
        last = _last_number(tx, issuer_id, scope)
        number = (last or 0) + 1
        _set_last_number(tx, issuer_id, scope, number, known=last is not None)
        tx.execute("INSERT INTO crls (issuer_id, scope, kind, number, base_number, this_update, next_update, "
                   "state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'building', ?)",
                   (issuer_id, scope, kind, number, base_number, this_update, next_update, int(self.clock())))
        return number

    def crl_raise_number(self, issuer: str, scope: str, at_least: int) -> bool:
        """Make the next number of ``scope`` greater than ``at_least``; True when it had to move."""
        issuer_id = self._issuer_id(issuer)
        with self._write() as tx:
            row = tx.execute("SELECT last_number FROM crl_scopes WHERE issuer_id = ? AND scope = ?",
                             (issuer_id, scope)).fetchone()
            if row is not None and row[0] >= at_least:
                return False
            if row is None:
                tx.execute("INSERT INTO crl_scopes (issuer_id, scope, last_number) VALUES (?, ?, ?)",
                           (issuer_id, scope, at_least))
            else:
                tx.execute("UPDATE crl_scopes SET last_number = ? WHERE issuer_id = ? AND scope = ?",
                           (at_least, issuer_id, scope))
            self._audit(tx, "crl", "crl-number-raised", issuer, None, str(row[0] if row else 0), str(at_least))
        return True

    def crl_finish(self, record: CrlRecord, state: str, change_seq: int = 0, entries: int | None = None,
                   size: int | None = None, sha256: str | None = None, error: str | None = None,
                   actor: str = "crl", data: bytes | None = None) -> None:
        """Record the outcome of a build; with several nodes (``keeps_crl_bytes``) a published CRL's bytes
        go into the registry too (only the two newest of each scope and kind are kept)."""
        issuer_id = self._issuer_id(record.issuer)
        keep = data if self.keeps_crl_bytes and state == "published" else None
        with self._write() as tx:
            tx.execute("UPDATE crls SET state = ?, change_seq = ?, entries = ?, size = ?, sha256 = ?, error = ?, "
                       "der = ? WHERE issuer_id = ? AND scope = ? AND number = ?",
                       (state, change_seq, entries, size, sha256, error, keep, issuer_id, record.scope,
                        record.number))
            if state == "published":
                self._published(tx, issuer_id, record, keep, actor, entries, sha256)

    def crl_record_published(self, issuer: str, scope: str, kind: str, number: int, this_update: int,
                             next_update: int, entries: int, size: int, sha256: str, actor: str,
                             data: bytes | None = None) -> CrlRecord:
        """Record a CRL signed elsewhere (``annuaire crl publish``) as published under its own number, in
        one transaction; ``CrlNumberRefused`` unless that number is greater than every number of its scope
        (built, burnt or published): numbers only go up, and the next one built here follows it."""
        issuer_id = self._issuer_id(issuer)
        keep = data if self.keeps_crl_bytes else None
        with self._write() as tx:
            last = _last_number(tx, issuer_id, scope)
            if number <= (last or 0):
                raise CrlNumberRefused(f"{issuer}: CRL number {number} is not greater than {last or 0}, the last "
                                       "number of its sequence (CRL numbers only go up)", conflict=True)
            _set_last_number(tx, issuer_id, scope, number, known=last is not None)
            tx.execute("INSERT INTO crls (issuer_id, scope, kind, number, base_number, this_update, next_update, "
                       "state, change_seq, entries, size, sha256, der, created_at) "
                       "VALUES (?, ?, ?, ?, NULL, ?, ?, 'published', 0, ?, ?, ?, ?, ?)",
                       (issuer_id, scope, kind, number, this_update, next_update, entries, size, sha256, keep,
                        int(self.clock())))
            record = CrlRecord(issuer, scope, kind, number, None, this_update, next_update, 0, "published",
                               entries, size, sha256, None)
            self._published(tx, issuer_id, record, keep, actor, entries, sha256)
        return record

    def _published(self, tx: Conn, issuer_id: int, record: CrlRecord, keep: bytes | None, actor: str,
                   entries: int | None, sha256: str | None) -> None:
        """What goes with every published CRL, in its transaction: older kept bytes dropped (the two newest
        stay), the other nodes told, the directory's CA entry queued, the audit record."""
        if keep is not None:
            tx.execute("UPDATE crls SET der = NULL WHERE issuer_id = ? AND scope = ? AND kind = ? AND number < ? "
                       "AND der IS NOT NULL AND number NOT IN (SELECT MAX(number) FROM crls WHERE issuer_id = ? "
                       "AND scope = ? AND kind = ? AND number < ? AND state = 'published')",
                       (issuer_id, record.scope, record.kind, record.number, issuer_id, record.scope,
                        record.kind, record.number))
            self.backend.notify(tx, "annuaire_crls")
        self._ldap_enqueue(tx, issuer_id, None, int(self.clock()))
        self._audit(tx, actor, f"crl-published-{record.kind}", record.issuer, None, None,
                    json.dumps({"scope": record.scope, "number": record.number, "entries": entries,
                                "sha256": sha256}, sort_keys=True))

    def crl_latest(self, issuer: str, scope: str = "main", kind: str = "full") -> CrlRecord | None:
        row = self._conn().execute(
            f"SELECT {_CRL_COLUMNS} FROM crls r JOIN issuers i ON i.id = r.issuer_id WHERE r.issuer_id = ? "
            "AND r.scope = ? AND r.kind = ? AND r.state = 'published' ORDER BY r.number DESC LIMIT 1",
            (self._issuer_id(issuer), scope, kind)).fetchone()
        return CrlRecord(*row) if row else None

    def crl_published(self, issuer: str, scope: str, kind: str, number: int) -> CrlRecord | None:
        """One published CRL by number (None when that number was never published in that scope)."""
        row = self._conn().execute(
            f"SELECT {_CRL_COLUMNS} FROM crls r JOIN issuers i ON i.id = r.issuer_id WHERE r.issuer_id = ? "
            "AND r.scope = ? AND r.kind = ? AND r.number = ? AND r.state = 'published'",
            (self._issuer_id(issuer), scope, kind, number)).fetchone()
        return CrlRecord(*row) if row else None

    def crl_last_number(self, issuer: str, scope: str = "main") -> int:
        """The last number of a scope's sequence (allocated, burnt or published; 0 before the first)."""
        row = self._conn().execute("SELECT last_number FROM crl_scopes WHERE issuer_id = ? AND scope = ?",
                                   (self._issuer_id(issuer), scope)).fetchone()
        return int(row[0]) if row else 0

    def crl_bytes(self, issuer: str, scope: str, kind: str, number: int) -> bytes | None:
        """The bytes of a published CRL, when the registry keeps them (several nodes)."""
        row = self._conn().execute("SELECT der FROM crls WHERE issuer_id = ? AND scope = ? AND kind = ? AND number = ? "
                                   "AND state = 'published'", (self._issuer_id(issuer), scope, kind, number)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    @contextlib.contextmanager
    def crl_snapshot(self, issuer: str) -> Iterator[CrlSnapshot]:
        """A read transaction: counts and entries seen by one CRL build are consistent with each other."""
        issuer_id = self._issuer_id(issuer)
        conn = self._conn()
        self.backend.begin_snapshot(conn)
        try:
            yield CrlSnapshot(conn, issuer_id)
        finally:
            conn.execute("COMMIT")


def _last_number(tx: Any, issuer_id: int, scope: str) -> int | None:
    """The last number a scope handed out (built, burnt or published), None before its first CRL."""
    row = tx.execute("SELECT last_number FROM crl_scopes WHERE issuer_id = ? AND scope = ?",
                     (issuer_id, scope)).fetchone()
    return row[0] if row else None


def _set_last_number(tx: Any, issuer_id: int, scope: str, number: int, known: bool) -> None:
    """Record ``number`` as the scope's last (the caller checked it goes up); the main scope's also on the
    issuer's row."""
    if known:
        tx.execute("UPDATE crl_scopes SET last_number = ? WHERE issuer_id = ? AND scope = ?",
                   (number, issuer_id, scope))
    else:
        tx.execute("INSERT INTO crl_scopes (issuer_id, scope, last_number) VALUES (?, ?, ?)",
                   (issuer_id, scope, number))
    if scope == "main":
        tx.execute("UPDATE issuers SET last_crl_number = ? WHERE id = ?", (number, issuer_id))
