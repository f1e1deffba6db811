"""The registry's core: connections, transactions, migrations, notifications and leases.

Every operation is one transaction (writers are serialised: they queue instead of failing half-way).
SQLite runs in WAL mode with ``synchronous=FULL`` and foreign keys on: a committed revocation survives
a crash or a power cut. PostgreSQL (``backends.py``) gives the same guarantees to several nodes.
The queries live in one module per role, on top of this core; ``store.Registry`` has them all.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from directory.registry.backends import BackendError, Conn, Lease, RegistryError, backend_for
from directory.registry.schema import BACKFILLS, MIGRATIONS

ChangeListener = Callable[[str, str, str], None]  # (issuer, serial_hex, what)


class NotRegistered(LookupError):
    """A look-up miss: the registry holds no such issuer or certificate. The caller named something
    unknown (the admin API answers 404, the command line refuses); not a failure of the registry itself
    (``RegistryError``: the admin API answers 503)."""


class UnknownIssuer(NotRegistered):
    """No issuer of that name in the registry."""


class UnknownCertificate(NotRegistered):
    """The issuer has no certificate with that serial."""


class RegistryCore:
    """Connections (one per thread), write transactions, change notifications, issuer ids."""

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

    def lease(self, name: str) -> Lease:
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
                backfill = BACKFILLS.get(version)
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

    def _issuer_id(self, name: str) -> int:
        cached = self._issuer_ids.get(name)
        if cached is not None:
            return cached
        row = self._conn().execute("SELECT id FROM issuers WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownIssuer(f"unknown issuer {name!r}")
        self._issuer_ids[name] = row[0]
        return row[0]


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
