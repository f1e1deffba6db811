"""The certificate registry: the one place that holds SQL.

Every operation is one transaction (writers are serialised: they queue instead of failing half-way)
and appends its audit record, hash-chained to the previous one, inside that same transaction.
SQLite runs in WAL mode with ``synchronous=FULL`` and foreign keys on: a committed revocation survives
a crash or a power cut. PostgreSQL (``backends.py``) gives the same guarantees to several nodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from directory import der
from directory.certinfo import CertificateInfo
from directory.publication import partition_key
from directory.registry import dead_letters
from directory.registry.backends import BackendError, RegistryError, backend_for
from directory.registry.dead_letters import LdapRefusal
from directory.registry.schema import MIGRATIONS
from directory.revocation import (
    REASON_CODES,
    Decision,
    RevocationRefused,
    RevocationState,
    decide_release,
    decide_revoke,
)

GENESIS_HASH = "0" * 64
Conn = Any  # a connection of the backend: ``execute(sql, params)``, ``executemany``


class UnknownIssuer(RegistryError):
    pass


class UnknownCertificate(RegistryError):
    pass


@dataclass(frozen=True)
class CertificateRecord:
    issuer: str
    serial_hex: str
    subject_dn: str | None
    emails: tuple[str, ...]
    dns_names: tuple[str, ...]
    professional_id: str | None
    not_before: int | None
    not_after: int | None
    der: bytes | None
    sha256: str | None
    profile: str | None
    status: str
    revocation_time: int | None
    reason: str | None
    invalidity_date: int | None
    forced: bool

    @property
    def state(self) -> RevocationState:
        return RevocationState(self.status, self.reason, self.revocation_time, self.invalidity_date)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer, "serial_hex": self.serial_hex, "subject": self.subject_dn,
            "emails": list(self.emails), "dns_names": list(self.dns_names),
            "professional_id": self.professional_id, "not_before": self.not_before,
            "not_after": self.not_after, "sha256": self.sha256, "profile": self.profile,
            "status": self.status, "revocation_time": self.revocation_time, "reason": self.reason,
            "invalidity_date": self.invalidity_date, "forced": self.forced,
        }


ImportResult = Literal["created", "present", "conflict", "completed"]


@dataclass(frozen=True)
class ImportOutcome:
    result: ImportResult
    message: str


@dataclass(frozen=True)
class ChangeOutcome:
    changed: bool
    message: str
    record: CertificateRecord


ChangeListener = Callable[[str, str, str], None]  # (issuer, serial_hex, what)


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


# a status change's time in ms (rows from before migration 5 only have whole seconds)
_CHANGE_MS = "COALESCE(s.at_ms, s.at * 1000)"
_CRL_COLUMNS = ("i.name, r.scope, r.kind, r.number, r.base_number, r.this_update, r.next_update, r.change_seq, "
                "r.state, r.entries, r.size, r.sha256, r.error")


class CrlSnapshot:
    """A consistent read view of one issuer's revocations (one read transaction) for building CRLs."""

    def __init__(self, conn: Conn, issuer_id: int) -> None:
        self._conn = conn
        self._issuer_id = issuer_id
        row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM status_changes WHERE issuer_id = ?",
                           (issuer_id,)).fetchone()
        self.change_seq: int = int(row[0])

    def full_entries(self, cutoff: int | None, partition: tuple[int, int] | None = None,
                     chunks: int = 20) -> tuple[int, list[bytes]]:
        """(count, DER chunks) of a complete CRL's entries, concatenated inside SQLite.

        The entries were encoded when each certificate was revoked; here they are only concatenated, in
        about ``chunks`` ranges of certificate ids (bounded transient memory), with no per-entry Python
        object at all: the cost that makes a million entries take well under a second.
        ``cutoff`` drops certificates that expired before it (unknown expiry is kept).
        """
        low, high = self._conn.execute("SELECT MIN(certificate_id), MAX(certificate_id) FROM crl_entries "
                                       "WHERE issuer_id = ?", (self._issuer_id,)).fetchone()
        if low is None:
            return 0, []
        sql = ("SELECT COUNT(*), CAST(group_concat(entry_der, '') AS BLOB) FROM crl_entries "
               "WHERE issuer_id = ? AND certificate_id >= ? AND certificate_id < ?")
        extra: list[Any] = []
        if cutoff is not None:
            sql += " AND (not_after IS NULL OR not_after >= ?)"
            extra.append(cutoff)
        if partition is not None:
            sql += " AND serial_low % ? = ?"
            extra.extend(partition)
        span = max(1, (high - low + chunks) // chunks)
        total, out = 0, []
        for start in range(low, high + 1, span):
            count, blob = self._conn.execute(sql, [self._issuer_id, start, start + span, *extra]).fetchone()
            if count:
                total += count
                out.append(blob)
        return total, out

    def delta_entries(self, since_seq: int, removal_time: int) -> list[bytes]:
        """Entries changed after ``since_seq``: current entries, plus removeFromCRL for released holds."""
        rows = self._conn.execute(
            "SELECT c.id, c.serial_hex, c.status, e.entry_der FROM certificates c "
            "LEFT JOIN crl_entries e ON e.issuer_id = c.issuer_id AND e.certificate_id = c.id "
            "WHERE c.id IN (SELECT certificate_id FROM status_changes WHERE issuer_id = ? AND seq > ? AND seq <= ?) "
            "ORDER BY c.id", (self._issuer_id, since_seq, self.change_seq)).fetchall()
        out: list[bytes] = []
        for cid, serial_hex, status, entry in rows:
            if status != "good":
                out.append(bytes(entry))
                continue
            was = self._conn.execute("SELECT status FROM status_changes WHERE certificate_id = ? AND seq <= ? "
                                     "ORDER BY seq DESC LIMIT 1", (cid, since_seq)).fetchone()
            if was is not None and was[0] == "on-hold":
                out.append(der.revoked_entry(int(serial_hex, 16), removal_time, der.REMOVE_FROM_CRL))
        return out

_COLUMNS = (
    "i.name, c.serial_hex, c.subject_dn, c.emails, c.dns_names, c.professional_id, c.not_before, c.not_after, "
    "c.der, c.sha256, c.profile, c.status, c.revocation_time, c.reason, c.invalidity_date, c.forced"
)


def _record(row: tuple[Any, ...]) -> CertificateRecord:
    return CertificateRecord(
        issuer=row[0], serial_hex=row[1], subject_dn=row[2],
        emails=tuple(x for x in row[3].split("\n") if x), dns_names=tuple(x for x in row[4].split("\n") if x),
        professional_id=row[5], not_before=row[6], not_after=row[7],
        der=bytes(row[8]) if row[8] is not None else None, sha256=row[9], profile=row[10], status=row[11],
        revocation_time=row[12], reason=row[13], invalidity_date=row[14], forced=bool(row[15]),
    )


def _state_json(record: CertificateRecord | None) -> str | None:
    if record is None:
        return None
    return json.dumps({"status": record.status, "reason": record.reason,
                       "revocation_time": record.revocation_time,
                       "invalidity_date": record.invalidity_date}, sort_keys=True)


class Registry:
    """Certificates and their status per issuer, plus the audit trail."""

    def __init__(self, location: Path | str, clock: Callable[[], float] = time.time) -> None:
        """``location``: a SQLite file path, ``sqlite:///PATH`` or ``postgresql://...``."""
        try:
            self.backend = backend_for(location)
        except BackendError as exc:
            raise RegistryError(str(exc)) from None
        self.path: Path | None = getattr(self.backend, "path", None)
        self.clock = clock
        self._local = threading.local()
        self._all: list[Conn] = []
        self._all_lock = threading.Lock()
        self._listeners: list[ChangeListener] = []
        self._issuer_ids: dict[str, int] = {}
        # off when the configuration has no [ldap]: nothing would drain the outbox (a later first sync is full)
        self.ldap_outbox_enabled = True
        # several nodes read CRLs from the registry (PostgreSQL); one machine reads its own files (SQLite)
        self.keeps_crl_bytes = self.backend.name == "postgresql"
        self._migrate()

    # -- connection ------------------------------------------------------------------------
    def _conn(self) -> Conn:
        conn: Conn | None = getattr(self._local, "conn", None)
        if conn is not None and not self.backend.alive(conn):
            self._forget_connection()  # the server went away: a new connection, as the next caller's right
            conn = None
        if conn is None:
            try:
                conn = self.backend.connect()
            except (BackendError, *self.backend.errors) as exc:
                raise RegistryError(f"cannot open registry {self.backend.describe()}: {exc}") from exc
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @property
    def notifies(self) -> bool:
        """True when other processes' commits are announced (PostgreSQL): waiters need not poll fast."""
        return self.backend.name == "postgresql"

    def change_token(self, what: str) -> int:
        """Take before reading; give to ``wait_for``: a commit in between wakes the wait at once."""
        return self.backend.token(f"annuaire_{what}")

    def wait_for(self, what: str, timeout: float, since: int | None = None) -> bool:
        """Until another process commits a status change (``changes``) or a CRL (``crls``), or ``timeout``:
        PostgreSQL wakes at once (LISTEN/NOTIFY); SQLite simply waits ``timeout`` (its callers poll)."""
        return self.backend.wait(f"annuaire_{what}", timeout, since)

    def lease(self, name: str):  # type: ignore[no-untyped-def]
        """An exclusive lease across every node sharing this registry (see ``backends``)."""
        return self.backend.lease(name)

    @contextlib.contextmanager
    def _write(self) -> Iterator[Conn]:
        conn = self._conn()
        self.backend.begin_write(conn)
        try:
            yield conn
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except (BackendError, *self.backend.errors):
                self._forget_connection()  # a dead connection rolled back with it
            raise
        conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write() as tx:
            tx.execute(self.backend.ddl("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                                        "description TEXT NOT NULL, applied_at INTEGER NOT NULL)"))
        for version, description, sql in MIGRATIONS:
            with self._write() as tx:
                done = tx.execute("SELECT 1 FROM schema_version WHERE version = ?", (version,)).fetchone()
                if done:
                    continue
                for statement in filter(str.strip, sql.split(";")):
                    tx.execute(self.backend.ddl(statement))
                backfill = _BACKFILLS.get(version)
                if backfill is not None:
                    backfill(tx)
                tx.execute("INSERT INTO schema_version VALUES (?, ?, ?)", (version, description, int(self.clock())))

    def schema_version(self) -> int:
        row = self._conn().execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def ping(self) -> None:
        """Raise ``RegistryError`` unless the database answers (readiness)."""
        try:
            self._conn().execute("SELECT 1 FROM issuers LIMIT 1").fetchall()
        except self.backend.errors as exc:
            self._forget_connection()
            raise RegistryError(f"registry unreachable: {exc}") from exc

    def _forget_connection(self) -> None:
        """Drop this thread's connection (broken): the next call opens a new one."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._all_lock:
                if conn in self._all:
                    self._all.remove(conn)
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Close every connection this registry opened (all threads) and the notification listener."""
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()
        self.backend.close()

    def add_listener(self, listener: ChangeListener) -> None:
        """Called after commit for every status change (OCSP re-signing, CRL and LDAP triggers)."""
        self._listeners.append(listener)

    def _notify(self, issuer: str, serial_hex: str, what: str) -> None:
        for listener in self._listeners:
            listener(issuer, serial_hex, what)

    # -- audit -----------------------------------------------------------------------------
    def _audit(self, tx: Conn, actor: str, action: str, issuer: str | None,
               serial_hex: str | None, before: str | None, after: str | None) -> None:
        row = tx.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        prev = row[0] if row else GENESIS_HASH
        at = int(self.clock())
        digest = audit_hash(prev, at, actor, action, issuer, serial_hex, before, after)
        tx.execute("INSERT INTO audit (at, actor, action, issuer, serial_hex, before, after, prev_hash, hash) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (at, actor, action, issuer, serial_hex, before, after,
                                                          prev, digest))

    def audit_records(self) -> list[dict[str, Any]]:
        return list(self.iter_audit())

    def iter_audit(self, after_id: int = 0, batch: int = 5000) -> Iterator[dict[str, Any]]:
        """Audit records in chain order, read in batches (a registry of millions is not loaded at once)."""
        names = ["id", "at", "actor", "action", "issuer", "serial_hex", "before", "after", "prev_hash", "hash"]
        while True:
            rows = self._conn().execute(f"SELECT {', '.join(names)} FROM audit WHERE id > ? ORDER BY id LIMIT ?",
                                        (after_id, batch)).fetchall()
            for row in rows:
                yield dict(zip(names, row, strict=True))
            if len(rows) < batch:
                return
            after_id = rows[-1][0]

    def audit_append(self, actor: str, action: str, issuer: str | None = None, serial_hex: str | None = None,
                     before: str | None = None, after: str | None = None) -> None:
        """Append one record on its own (an admin API call, say); other writes audit inside their transaction."""
        with self._write() as tx:
            self._audit(tx, actor, action, issuer, serial_hex, before, after)

    # -- issuers ---------------------------------------------------------------------------
    def ensure_issuer(self, name: str, subject_der: bytes, certificate_der: bytes, actor: str = "config") -> None:
        """Record a configured issuer (idempotent; a renewed CA certificate replaces the stored one)."""
        with self._write() as tx:
            row = tx.execute("SELECT id, certificate_der FROM issuers WHERE name = ?", (name,)).fetchone()
            if row is None:
                new_id = tx.execute("INSERT INTO issuers (name, subject_der, certificate_der) VALUES (?, ?, ?) "
                                    "RETURNING id", (name, subject_der, certificate_der)).fetchone()[0]
                self._ldap_enqueue(tx, new_id, None, int(self.clock()))
                self._audit(tx, actor, "issuer-added", name, None, None, hashlib.sha256(certificate_der).hexdigest())
            elif bytes(row[1]) != certificate_der:
                tx.execute("UPDATE issuers SET subject_der = ?, certificate_der = ? WHERE id = ?",
                           (subject_der, certificate_der, row[0]))
                self._ldap_enqueue(tx, row[0], None, int(self.clock()))
                self._audit(tx, actor, "issuer-certificate-changed", name, None,
                            hashlib.sha256(bytes(row[1])).hexdigest(), hashlib.sha256(certificate_der).hexdigest())

    def _issuer_id(self, name: str) -> int:
        cached = self._issuer_ids.get(name)
        if cached is not None:
            return cached
        row = self._conn().execute("SELECT id FROM issuers WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownIssuer(f"unknown issuer {name!r}")
        self._issuer_ids[name] = row[0]
        return row[0]

    def issuer_names(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT name FROM issuers ORDER BY name")]

    # -- CRLs ------------------------------------------------------------------------------
    def crl_allocate(self, issuer: str, scope: str, kind: str, this_update: int, next_update: int,
                     base_number: int | None = None) -> CrlRecord:
        """Allocate the next number of ``scope`` and record the CRL as 'building', in one transaction.

        The number is never reused, even when the build then fails or the process dies: it is burnt.
        """
        issuer_id = self._issuer_id(issuer)
        now = int(self.clock())
        with self._write() as tx:
            row = tx.execute("SELECT last_number FROM crl_scopes WHERE issuer_id = ? AND scope = ?",
                             (issuer_id, scope)).fetchone()
            number = (row[0] if row else 0) + 1
            if row:
                tx.execute("UPDATE crl_scopes SET last_number = ? WHERE issuer_id = ? AND scope = ?",
                           (number, issuer_id, scope))
            else:
                tx.execute("INSERT INTO crl_scopes (issuer_id, scope, last_number) VALUES (?, ?, ?)",
                           (issuer_id, scope, number))
            if scope == "main":
                tx.execute("UPDATE issuers SET last_crl_number = ? WHERE id = ?", (number, issuer_id))
            tx.execute("INSERT INTO crls (issuer_id, scope, kind, number, base_number, this_update, next_update, "
                       "state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'building', ?)",
                       (issuer_id, scope, kind, number, base_number, this_update, next_update, now))
        return CrlRecord(issuer, scope, kind, number, base_number, this_update, next_update, 0, "building",
                         None, None, None, None)

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
            if keep is not None:
                tx.execute("UPDATE crls SET der = NULL WHERE issuer_id = ? AND scope = ? AND kind = ? AND number < ? "
                           "AND der IS NOT NULL AND number NOT IN (SELECT MAX(number) FROM crls WHERE issuer_id = ? "
                           "AND scope = ? AND kind = ? AND number < ? AND state = 'published')",
                           (issuer_id, record.scope, record.kind, record.number, issuer_id, record.scope,
                            record.kind, record.number))
                self.backend.notify(tx, "annuaire_crls")
            if state == "published":
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

    def crl_bytes(self, issuer: str, scope: str, kind: str, number: int) -> bytes | None:
        """The bytes of a published CRL, when the registry keeps them (several nodes)."""
        row = self._conn().execute("SELECT der FROM crls WHERE issuer_id = ? AND scope = ? AND kind = ? AND number = ? "
                                   "AND state = 'published'", (self._issuer_id(issuer), scope, kind, number)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def change_seq(self, issuer: str) -> int:
        """Sequence number of the issuer's latest status change (0 when none)."""
        row = self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM status_changes WHERE issuer_id = ?",
                                   (self._issuer_id(issuer),)).fetchone()
        return int(row[0])

    # -- OCSP ------------------------------------------------------------------------------
    def status_of(self, issuer: str, serial_hex: str) -> tuple[str, int | None, str | None] | None:
        """(status, revocation_time, reason) of one certificate, or None when the registry never saw it."""
        row = self._conn().execute("SELECT status, revocation_time, reason FROM certificates WHERE issuer_id = ? "
                                   "AND serial_hex = ?", (self._issuer_id(issuer), serial_hex)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def serials(self, issuer: str) -> list[str]:
        """Serials of the certificates we hold (forced placeholders without a certificate included)."""
        return [r[0] for r in self._conn().execute("SELECT serial_hex FROM certificates WHERE issuer_id = ?",
                                                   (self._issuer_id(issuer),))]

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

    def ocsp_store(self, rows: list[tuple[str, str, str, int, int, bytes]]) -> None:
        """Persist pre-signed responses: (issuer, serial_hex, hash_name, this_update, next_update, body)."""
        if not rows:
            return
        with self._write() as tx:
            tx.executemany("INSERT OR REPLACE INTO ocsp_responses (issuer_id, serial_hex, hash_name, this_update, "
                           "next_update, body) VALUES (?, ?, ?, ?, ?, ?)",
                           [(self._issuer_id(i), s, h, t, n, b) for i, s, h, t, n, b in rows])

    def ocsp_load(self, now: int) -> Iterator[tuple[str, str, str, int, int, bytes]]:
        """Persisted responses still valid and signed after the certificate's last change."""
        yield from self._conn().execute(
            "SELECT i.name, r.serial_hex, r.hash_name, r.this_update, r.next_update, r.body FROM ocsp_responses r "
            "JOIN issuers i ON i.id = r.issuer_id JOIN certificates c ON c.issuer_id = r.issuer_id "
            "AND c.serial_hex = r.serial_hex WHERE r.next_update > ? AND c.updated_at < r.this_update", (now,))

    def ocsp_due(self, issuer: str, signed_before: int) -> list[tuple[str, str]]:
        """(serial_hex, hash_name) of persisted responses signed before ``signed_before`` (to refresh)."""
        return [(r[0], r[1]) for r in self._conn().execute(
            "SELECT serial_hex, hash_name FROM ocsp_responses WHERE issuer_id = ? AND this_update < ?",
            (self._issuer_id(issuer), signed_before))]

    def crl_records(self, issuer: str) -> list[CrlRecord]:
        rows = self._conn().execute(f"SELECT {_CRL_COLUMNS} FROM crls r JOIN issuers i ON i.id = r.issuer_id "
                                    "WHERE r.issuer_id = ? ORDER BY r.scope, r.number", (self._issuer_id(issuer),))
        return [CrlRecord(*row) for row in rows.fetchall()]

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

    # -- LDAP directory --------------------------------------------------------------------------
    def _ldap_enqueue(self, tx: Conn, issuer_id: int | None, certificate_id: int | None,
                      now: int, status_change: bool = False) -> None:
        """In the transaction of the change itself: the directory learns of every change, or of none.

        Status changes carry their time in milliseconds: their time to the directory is a metric.
        """
        if self.ldap_outbox_enabled:
            tx.execute("INSERT INTO ldap_outbox (issuer_id, certificate_id, enqueued_at, enqueued_ms) "
                       "VALUES (?, ?, ?, ?)", (issuer_id, certificate_id, now,
                                               int(self.clock() * 1000) if status_change else None))

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
            rows = [r for chunk in _chunks(wanted, 500) for r in conn.execute(
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
        (seconds) of the status changes among the rows dropped (visibility latency)."""
        with self._write() as tx:
            return dead_letters.settle(tx, layout, now, set(ids), up_to, refusals, self._issuer_id)

    def ldap_refused(self, limit: int = 5) -> tuple[int, list[dict[str, Any]]]:
        """Dead letters: how many outbox rows the directory refused, and the oldest few (what, why, when next)."""
        return dead_letters.refused(self._conn(), limit)

    def ldap_outbox_done(self, ids: Iterable[int] = (), up_to: int | None = None) -> None:
        """Drop applied rows: the listed ones, or every row up to ``up_to`` (a full reconcile covered them)."""
        with self._write() as tx:
            if up_to is not None:
                tx.execute("DELETE FROM ldap_outbox WHERE id <= ?", (up_to,))
            tx.executemany("DELETE FROM ldap_outbox WHERE id = ?", [(i,) for i in ids])

    def ldap_unprojected(self, layout: str, certificate_ids: Sequence[int] | None = None) -> list[int]:
        """Certificates with bytes and no projection for ``layout`` (all, or among ``certificate_ids``)."""
        sql = ("SELECT c.id FROM certificates c LEFT JOIN ldap_projection p ON p.certificate_id = c.id "
               "WHERE c.der IS NOT NULL AND (p.layout IS NULL OR p.layout != ?)")
        if certificate_ids is None:
            return [r[0] for r in self._conn().execute(sql, (layout,))]
        out: list[int] = []
        for chunk in _chunks(list(certificate_ids), 500):
            out += [r[0] for r in self._conn().execute(sql + f" AND c.id IN ({','.join('?' * len(chunk))})",
                                                       (layout, *chunk))]
        return out

    def projection_inputs(self, certificate_ids: Sequence[int]) -> list[tuple[int, bytes, str | None, str]]:
        """(id, der, profile, emails) of the given certificates."""
        out: list[tuple[int, bytes, str | None, str]] = []
        for chunk in _chunks(list(certificate_ids), 500):
            out += [(r[0], bytes(r[1]), r[2], r[3]) for r in self._conn().execute(
                "SELECT id, der, profile, emails FROM certificates WHERE der IS NOT NULL AND id IN "
                f"({','.join('?' * len(chunk))})", chunk)]
        return out

    def ldap_project(self, layout: str, rows: Sequence[tuple[int, str | None, str | None, str | None]]) -> None:
        """Store (certificate id, dn_key, dn, attributes JSON) computed for ``layout``."""
        with self._write() as tx:
            tx.executemany("INSERT OR REPLACE INTO ldap_projection (certificate_id, layout, dn_key, dn, attributes) "
                           "VALUES (?, ?, ?, ?, ?)", [(cid, layout, k, d, a) for cid, k, d, a in rows])

    def ldap_project_serials(self, layout: str, issuer: str,
                             rows: Sequence[tuple[str, str | None, str | None, str | None]]) -> None:
        """``ldap_project`` keyed by serial (what an import knows): (serial_hex, dn_key, dn, attributes JSON)."""
        issuer_id = self._issuer_id(issuer)
        with self._write() as tx:
            tx.executemany("INSERT OR REPLACE INTO ldap_projection (certificate_id, layout, dn_key, dn, attributes) "
                           "SELECT id, ?, ?, ?, ? FROM certificates WHERE issuer_id = ? AND serial_hex = ?",
                           [(layout, k, d, a, issuer_id, serial) for serial, k, d, a in rows])

    def ldap_dn_keys(self, layout: str, certificate_ids: Sequence[int]) -> set[str]:
        """Entries (dn_key) the given certificates map to, whatever their status."""
        keys: set[str] = set()
        for chunk in _chunks(list(certificate_ids), 500):
            keys.update(r[0] for r in self._conn().execute(
                f"SELECT dn_key FROM ldap_projection WHERE layout = ? AND dn_key IS NOT NULL "
                f"AND certificate_id IN ({','.join('?' * len(chunk))})", (layout, *chunk)))
        return keys

    def ldap_published(self, layout: str, now: int, dn_keys: Sequence[str] | None = None,
                       ) -> Iterator[tuple[str, str, str, int, str, int]]:
        """(dn_key, dn, attributes JSON, certificate id, sha256, not_before) of what the directory must
        show: good, unexpired certificates that map to an entry. All of them, or those of ``dn_keys``."""
        sql = ("SELECT p.dn_key, p.dn, p.attributes, c.id, c.sha256, COALESCE(c.not_before, 0) "
               "FROM ldap_projection p JOIN certificates c ON c.id = p.certificate_id "
               "WHERE p.layout = ? AND p.dn_key IS NOT NULL AND c.status = 'good' AND c.der IS NOT NULL "
               "AND (c.not_after IS NULL OR c.not_after > ?)")
        if dn_keys is None:
            yield from self._conn().execute(sql, (layout, now))
            return
        for chunk in _chunks(list(dn_keys), 500):
            yield from self._conn().execute(sql + f" AND p.dn_key IN ({','.join('?' * len(chunk))})",
                                            (layout, now, *chunk))

    def ldap_projected_dns(self, layout: str, dn_keys: Sequence[str]) -> list[tuple[str, str]]:
        """(dn_key, dn) as projected, for entries that may have to be removed."""
        out: list[tuple[str, str]] = []
        for chunk in _chunks(list(dn_keys), 500):
            out += [(r[0], r[1]) for r in self._conn().execute(
                f"SELECT dn_key, MIN(dn) FROM ldap_projection WHERE layout = ? AND dn_key IN "
                f"({','.join('?' * len(chunk))}) GROUP BY dn_key", (layout, *chunk))]
        return out

    def ldap_unplaced(self, layout: str, now: int) -> int:
        """Good, unexpired end-entity certificates that no DN template could place in the directory."""
        return int(self._conn().execute(
            "SELECT COUNT(*) FROM ldap_projection p JOIN certificates c ON c.id = p.certificate_id "
            "WHERE p.layout = ? AND p.dn_key IS NULL AND c.status = 'good' AND c.profile NOT IN ('ca', "
            "'ocsp-signing') AND (c.not_after IS NULL OR c.not_after > ?)", (layout, now)).fetchone()[0])

    def published_state(self, certificate_id: int, now: int) -> tuple[str, int] | None:
        """(sha256, not_before) when the certificate must be in the directory (good, unexpired), else None."""
        row = self._conn().execute(
            "SELECT sha256, COALESCE(not_before, 0) FROM certificates WHERE id = ? AND status = 'good' "
            "AND der IS NOT NULL AND (not_after IS NULL OR not_after > ?)", (certificate_id, now)).fetchone()
        return (row[0], row[1]) if row else None

    def certificate_ders(self, certificate_ids: Sequence[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for chunk in _chunks(list(certificate_ids), 500):
            out.update((r[0], bytes(r[1])) for r in self._conn().execute(
                f"SELECT id, der FROM certificates WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        return out

    def expired_between(self, after: int, until: int) -> list[int]:
        """Certificates whose notAfter passed in (after, until]: their directory values must go."""
        return [r[0] for r in self._conn().execute(
            "SELECT id FROM certificates WHERE not_after > ? AND not_after <= ?", (after, until))]

    def issuer_certificates(self) -> list[tuple[str, bytes, bool]]:
        """(name, CA certificate DER, whether it has issued CA certificates: its CRL is then also an ARL)."""
        return [(r[0], bytes(r[1]), bool(r[2])) for r in self._conn().execute(
            "SELECT i.name, i.certificate_der, EXISTS (SELECT 1 FROM certificates c WHERE c.issuer_id = i.id "
            "AND c.profile = 'ca') FROM issuers i ORDER BY i.name")]

    def state_get(self, name: str) -> str | None:
        row = self._conn().execute("SELECT value FROM ldap_state WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def state_set(self, values: dict[str, str]) -> None:
        with self._write() as tx:
            tx.executemany("INSERT OR REPLACE INTO ldap_state (name, value) VALUES (?, ?)", list(values.items()))

    # -- certificates ----------------------------------------------------------------------
    def get(self, issuer: str, serial_hex: str) -> CertificateRecord | None:
        return self._get_tx(self._conn(), self._issuer_id(issuer), serial_hex)

    def _get_tx(self, tx: Conn, issuer_id: int, serial_hex: str) -> CertificateRecord | None:
        row = tx.execute(f"SELECT {_COLUMNS} FROM certificates c JOIN issuers i ON i.id = c.issuer_id "
                         "WHERE c.issuer_id = ? AND c.serial_hex = ?", (issuer_id, serial_hex)).fetchone()
        return _record(row) if row else None

    def find_by_sha256(self, sha256: str) -> CertificateRecord | None:
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM certificates c JOIN issuers i ON i.id = c.issuer_id "
                                   "WHERE c.sha256 = ?", (sha256,)).fetchone()
        return _record(row) if row else None

    def iter_certificates(self, issuer: str | None = None) -> Iterator[CertificateRecord]:
        sql = f"SELECT {_COLUMNS} FROM certificates c JOIN issuers i ON i.id = c.issuer_id"
        args: tuple[Any, ...] = ()
        if issuer is not None:
            sql += " WHERE c.issuer_id = ?"
            args = (self._issuer_id(issuer),)
        for row in self._conn().execute(sql + " ORDER BY c.id", args):
            yield _record(row)

    def counts(self) -> dict[str, dict[str, int]]:
        """{issuer: {status: n}} for every configured issuer (zeros included)."""
        result = {name: {"good": 0, "revoked": 0, "on-hold": 0} for name in self.issuer_names()}
        for name, status, n in self._conn().execute(
                "SELECT i.name, c.status, COUNT(*) FROM certificates c JOIN issuers i ON i.id = c.issuer_id "
                "GROUP BY i.name, c.status"):
            result[name][status] = n
        return result

    def import_certificates(self, issuer: str, infos: Iterable[CertificateInfo],
                            actor: str = "import") -> list[ImportOutcome]:
        """Insert certificates in one transaction; each gets its own outcome, conflicts change nothing."""
        issuer_id = self._issuer_id(issuer)
        items = list(infos)
        now = int(self.clock())
        with self._write() as tx:
            outcomes = [self._import_one(tx, issuer, issuer_id, info, actor, now) for info in items]
        for outcome, info in zip(outcomes, items, strict=True):
            if outcome.result in ("created", "completed"):
                self._notify(issuer, info.serial_hex, "imported")
        return outcomes

    def _import_one(self, tx: Conn, issuer: str, issuer_id: int, info: CertificateInfo,
                    actor: str, now: int) -> ImportOutcome:
        row = tx.execute("SELECT sha256, forced FROM certificates WHERE issuer_id = ? AND serial_hex = ?",
                         (issuer_id, info.serial_hex)).fetchone()
        fields = (info.subject_dn, "\n".join(info.emails), "\n".join(info.dns_names), info.professional_id,
                  info.not_before, info.not_after, info.der, info.sha256, info.profile)
        if row is None:
            new_id = tx.execute(
                "INSERT INTO certificates (issuer_id, serial_hex, subject_dn, emails, dns_names, professional_id, "
                "not_before, not_after, der, sha256, profile, status, imported_at, updated_at, serial_low) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'good', ?, ?, ?) RETURNING id",
                (issuer_id, info.serial_hex, *fields, now, now, serial_low(info.serial_hex))).fetchone()[0]
            self._ldap_enqueue(tx, issuer_id, new_id, now)
            self._audit(tx, actor, "import", issuer, info.serial_hex, None, info.sha256)
            return ImportOutcome("created", "imported")
        if row[0] == info.sha256:
            return ImportOutcome("present", "already present")
        if row[0] is None:
            # A serial revoked with --force before we had its certificate: keep the revocation, add the bytes.
            tx.execute("UPDATE certificates SET subject_dn = ?, emails = ?, dns_names = ?, professional_id = ?, "
                       "not_before = ?, not_after = ?, der = ?, sha256 = ?, profile = ?, updated_at = ? "
                       "WHERE issuer_id = ? AND serial_hex = ?", (*fields, now, issuer_id, info.serial_hex))
            tx.execute("UPDATE crl_entries SET not_after = ? WHERE issuer_id = ? AND certificate_id = "
                       "(SELECT id FROM certificates WHERE issuer_id = ? AND serial_hex = ?)",
                       (info.not_after, issuer_id, issuer_id, info.serial_hex))
            cid = tx.execute("SELECT id FROM certificates WHERE issuer_id = ? AND serial_hex = ?",
                             (issuer_id, info.serial_hex)).fetchone()[0]
            self._ldap_enqueue(tx, issuer_id, cid, now)
            self._audit(tx, actor, "import-completes-forced", issuer, info.serial_hex, None, info.sha256)
            return ImportOutcome("completed", "imported; it was already revoked with --force, revocation kept")
        return ImportOutcome(
            "conflict",
            f"conflict: issuer {issuer} serial 0x{info.serial_hex} is already registered with other bytes "
            f"(sha256 {row[0][:16]}...); nothing changed",
        )

    def revoke(self, issuer: str, serial_hex: str, reason: str, at: int | None = None,
               invalidity_date: int | None = None, actor: str = "cli", force: bool = False) -> ChangeOutcome:
        """Apply the RFC 5280 rules (``directory.revocation``) in one transaction."""
        issuer_id = self._issuer_id(issuer)
        now = int(self.clock())
        at = now if at is None else at
        with self._write() as tx:
            current = self._get_tx(tx, issuer_id, serial_hex)
            if current is None:
                if not force:
                    # no hint here: only the caller knows whether the input could have meant another
                    # serial (the CLI suggests --force only when it could not)
                    raise UnknownCertificate(f"issuer {issuer} has no certificate with serial 0x{serial_hex}")
                decision = decide_revoke(RevocationState("good"), reason, at, invalidity_date, now, None)
                tx.execute("INSERT INTO certificates (issuer_id, serial_hex, status, forced, imported_at, updated_at, "
                           "serial_low) VALUES (?, ?, 'good', 1, ?, ?, ?)",
                           (issuer_id, serial_hex, now, now, serial_low(serial_hex)))
                after = self._apply(tx, issuer_id, serial_hex, decision, now)
                self._audit(tx, actor, "revoke-forced", issuer, serial_hex, None, _state_json(after))
                message = decision.message + " (forced: serial unknown to the registry)"
            else:
                decision = decide_revoke(current.state, reason, at, invalidity_date, now, current.not_before)
                if decision.action == "noop":
                    return ChangeOutcome(False, decision.message, current)
                after = self._apply(tx, issuer_id, serial_hex, decision, now)
                self._audit(tx, actor, "revoke", issuer, serial_hex, _state_json(current), _state_json(after))
                message = decision.message
        assert after is not None
        self._notify(issuer, serial_hex, "revoked")
        return ChangeOutcome(True, message, after)

    def release_hold(self, issuer: str, serial_hex: str, actor: str = "cli") -> ChangeOutcome:
        issuer_id = self._issuer_id(issuer)
        now = int(self.clock())
        with self._write() as tx:
            current = self._get_tx(tx, issuer_id, serial_hex)
            if current is None:
                raise UnknownCertificate(f"issuer {issuer} has no certificate with serial 0x{serial_hex}")
            decision = decide_release(current.state)
            if decision.action == "noop":
                return ChangeOutcome(False, decision.message, current)
            after = self._apply(tx, issuer_id, serial_hex, decision, now)
            self._audit(tx, actor, "release-hold", issuer, serial_hex, _state_json(current), _state_json(after))
        self._notify(issuer, serial_hex, "released")
        return ChangeOutcome(True, decision.message, after)

    def _apply(self, tx: Conn, issuer_id: int, serial_hex: str, decision: Decision,
               now: int) -> CertificateRecord:
        """Write the new state, its CRL entry bytes (encoded once, here) and a status change record."""
        s = decision.state
        tx.execute("UPDATE certificates SET status = ?, reason = ?, revocation_time = ?, invalidity_date = ?, "
                   "updated_at = ? WHERE issuer_id = ? AND serial_hex = ?",
                   (s.status, s.reason, s.revocation_time, s.invalidity_date, now, issuer_id, serial_hex))
        cid, not_after = tx.execute("SELECT id, not_after FROM certificates WHERE issuer_id = ? AND serial_hex = ?",
                                    (issuer_id, serial_hex)).fetchone()
        _store_crl_entry(tx, issuer_id, cid, serial_hex, not_after, s.status, s.revocation_time, s.reason,
                         s.invalidity_date)
        tx.execute("INSERT INTO status_changes (issuer_id, certificate_id, at, status, at_ms) VALUES (?, ?, ?, ?, ?)",
                   (issuer_id, cid, now, s.status, int(self.clock() * 1000)))
        self._ldap_enqueue(tx, issuer_id, cid, now, status_change=True)
        self.backend.notify(tx, "annuaire_changes")  # other nodes' OCSP hear of it at commit
        after = self._get_tx(tx, issuer_id, serial_hex)
        assert after is not None
        return after


def serial_low(serial_hex: str) -> int:
    """The serial's CRL partition key (``publication.partition_key``), stored so a partition is one query."""
    return partition_key(int(serial_hex, 16))


def crl_entry_for(serial_hex: str, status: str, revocation_time: int | None, reason: str | None,
                  invalidity_date: int | None) -> bytes | None:
    if status == "good" or revocation_time is None:
        return None
    code = REASON_CODES[reason] if reason else None
    return der.revoked_entry(int(serial_hex, 16), revocation_time, code, invalidity_date)


def _store_crl_entry(tx: Conn, issuer_id: int, cid: int, serial_hex: str, not_after: int | None,
                     status: str, revocation_time: int | None, reason: str | None,
                     invalidity_date: int | None) -> None:
    """Keep ``crl_entries`` in step with the status: the entry bytes exist exactly while revoked or held."""
    entry = crl_entry_for(serial_hex, status, revocation_time, reason, invalidity_date)
    if entry is None:
        tx.execute("DELETE FROM crl_entries WHERE issuer_id = ? AND certificate_id = ?", (issuer_id, cid))
    else:
        tx.execute("INSERT OR REPLACE INTO crl_entries (issuer_id, certificate_id, not_after, serial_low, entry_der) "
                   "VALUES (?, ?, ?, ?, ?)", (issuer_id, cid, not_after, serial_low(serial_hex), entry))


def _backfill_v2(tx: Conn) -> None:
    rows = tx.execute("SELECT id, issuer_id, serial_hex, not_after, status, revocation_time, reason, "
                      "invalidity_date FROM certificates")
    for cid, issuer_id, serial_hex, not_after, status, rtime, reason, inval in rows.fetchall():
        tx.execute("UPDATE certificates SET serial_low = ? WHERE id = ?", (serial_low(serial_hex), cid))
        _store_crl_entry(tx, issuer_id, cid, serial_hex, not_after, status, rtime, reason, inval)


def _backfill_v7(tx: Conn) -> None:
    """Drop persisted OCSP answers whose CertID is not the canonical one for their row (issue 13: answers
    echoing a request's bytes were cached, persisted and served to everyone); they are signed again."""
    from ocsp.cert_id import is_canonical_answer  # the rule the responder also applies when loading

    issuers = {i: bytes(der) for i, der in tx.execute("SELECT id, certificate_der FROM issuers").fetchall()}
    after: tuple[Any, ...] = (0, "", "")
    while True:
        rows = tx.execute("SELECT issuer_id, serial_hex, hash_name, body FROM ocsp_responses "
                          "WHERE (issuer_id, serial_hex, hash_name) > (?, ?, ?) "
                          "ORDER BY issuer_id, serial_hex, hash_name LIMIT 2000", after).fetchall()
        if not rows:
            return
        tx.executemany("DELETE FROM ocsp_responses WHERE issuer_id = ? AND serial_hex = ? AND hash_name = ?",
                       [(i, s, h) for i, s, h, body in rows
                        if not is_canonical_answer(issuers[i], s, h, bytes(body))])
        after = tuple(rows[-1][:3])


_BACKFILLS: dict[int, Callable[[Conn], None]] = {2: _backfill_v2, 7: _backfill_v7}


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def audit_hash(prev: str, at: int, actor: str, action: str, issuer: str | None, serial_hex: str | None,
               before: str | None, after: str | None) -> str:
    """SHA-256 over the previous hash and this record's fields, canonically encoded."""
    payload = json.dumps([prev, at, actor, action, issuer, serial_hex, before, after], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def open_registry(url: str, clock: Callable[[], float] = time.time) -> Registry:
    """Open (and migrate) the registry named by ``sqlite:///PATH`` or ``postgresql://...``."""
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise RegistryError("unsupported registry URL scheme (expected sqlite:///PATH or postgresql://...)")
    return Registry(url, clock)


__all__ = [
    "CertificateRecord",
    "ChangeOutcome",
    "ImportOutcome",
    "Registry",
    "RegistryError",
    "RevocationRefused",
    "UnknownCertificate",
    "UnknownIssuer",
    "open_registry",
]
