"""The two databases the registry runs on: SQLite (embedded default) and PostgreSQL (several nodes).

The store speaks one SQL dialect (SQLite's, ``?`` placeholders); ``PostgresBackend`` translates the few
differences once per statement: placeholders, upserts, the byte-string aggregate, and the DDL types.
Both give the store the same guarantees:
- write transactions are serialised (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction-scoped
  advisory lock taken first), so the audit hash chain and the status change sequence never fork and
  sequence order is commit order;
- a CRL build reads one consistent snapshot;
- ``notify`` inside a transaction reaches other processes after commit (PostgreSQL LISTEN/NOTIFY;
  SQLite has no such thing: readers poll);
- ``lease(name)`` is an exclusive, session-scoped lease: on PostgreSQL an advisory lock held by a
  dedicated connection, released by the server when its holder dies; on SQLite (one machine) the
  callers' own file locks already do this, so it is always granted.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import select
import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from directory.config.load import POSTGRESQL_MISSING
from directory.registry.snapshot import SQLITE_PRAGMAS

Conn = Any  # a connection of the backend: ``execute(sql, params)``, ``executemany``
WRITE_LOCK_KEY = 0x616E6E75  # "annu": the one advisory lock every write transaction takes first


class RegistryError(Exception):
    """The registry cannot be opened or used."""


class BackendError(RegistryError):
    """The database cannot be reached (or the connection to it was lost)."""


class Lease(Protocol):
    """An exclusive lease on ``name`` across every node sharing the registry (one holder at a time)."""

    name: str

    def try_acquire(self) -> bool:
        """True while this process holds the lease (taken now or held already); never blocks for long."""
        ...

    def release(self) -> None:
        """Give the lease up (another node's next ``try_acquire`` may take it)."""
        ...


class SqliteBackend:
    name = "sqlite"
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def describe(self) -> str:
        return str(self.path)

    def connect(self) -> Any:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        for pragma in SQLITE_PRAGMAS:
            conn.execute(pragma)
        return conn

    def alive(self, conn: Any) -> bool:
        return True

    def begin_write(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def begin_snapshot(self, conn: Any) -> None:
        conn.execute("BEGIN")

    def ddl(self, sql: str) -> str:
        return sql

    def notify(self, conn: Any, channel: str) -> None:
        return None

    def token(self, channel: str) -> int:
        return 0

    def wait(self, channel: str, timeout: float, since: int | None = None) -> bool:
        """No notifications in SQLite: the caller's poll interval is the wait. Returns False (timed out)."""
        threading.Event().wait(timeout)
        return False

    def lease(self, name: str) -> LocalLease:
        return LocalLease(name)

    def close(self) -> None:
        return None


class _PgConnection:
    """A psycopg connection that takes the store's SQL (translated, cached per statement). A lost
    connection is a ``BackendError`` (a ``RegistryError``): callers report it like any registry outage."""

    def __init__(self, conn: Any, url: str) -> None:
        import psycopg

        self.raw = conn
        self._lost = psycopg.OperationalError
        self._url = url

    def execute(self, sql: str, params: Any = ()) -> Any:
        try:
            return self.raw.execute(_pg_sql(sql), params if params is not None else ())
        except self._lost as exc:
            raise BackendError(f"PostgreSQL: {_scrub(str(exc).strip(), self._url)}") from None

    def executemany(self, sql: str, rows: Any) -> None:
        rows = list(rows)
        if rows:
            try:
                with self.raw.cursor() as cur:
                    cur.executemany(_pg_sql(sql), rows)
            except self._lost as exc:
                raise BackendError(f"PostgreSQL: {_scrub(str(exc).strip(), self._url)}") from None

    def close(self) -> None:
        self.raw.close()


class PostgresBackend:
    name = "postgresql"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise BackendError(POSTGRESQL_MISSING) from None

        self.psycopg = psycopg
        self.url = url
        self.errors = (psycopg.Error,)
        self._listener: Any = None
        self._listener_lock = threading.Lock()

    def describe(self) -> str:
        """The URL without its password (it never goes into a log or an error message)."""
        parts = urlsplit(self.url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        user = parts.username
        return urlunsplit((parts.scheme, f"{user}@{netloc}" if user else netloc, parts.path, parts.query, ""))

    def connect(self) -> Any:
        try:
            return _PgConnection(self.psycopg.connect(self.url, autocommit=True, connect_timeout=10), self.url)
        except self.psycopg.Error as exc:
            raise BackendError(_scrub(str(exc), self.url)) from None

    def alive(self, conn: Any) -> bool:
        return not (conn.raw.closed or conn.raw.broken)

    def begin_write(self, conn: Any) -> None:
        conn.execute("BEGIN")
        conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK_KEY,))

    def begin_snapshot(self, conn: Any) -> None:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def ddl(self, sql: str) -> str:
        sql = re.sub(r"\bINTEGER PRIMARY KEY\b", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", sql)
        sql = re.sub(r"\bINTEGER\b", "BIGINT", sql)
        sql = re.sub(r"\bBLOB\b", "BYTEA", sql)
        return sql.replace("WITHOUT ROWID", "")

    def notify(self, conn: Any, channel: str) -> None:
        conn.execute("SELECT pg_notify(?, '')", (channel,))

    def _listening(self) -> _Listener:
        with self._listener_lock:
            if self._listener is None:
                self._listener = _Listener(self)
            return self._listener

    def token(self, channel: str) -> int:
        """How many notifications of ``channel`` this process has heard: pass it to ``wait`` to not miss
        one that arrives between reading the database and starting to wait."""
        return self._listening().counts.get(channel, 0)

    def wait(self, channel: str, timeout: float, since: int | None = None) -> bool:
        """Block until a NOTIFY on ``channel`` (after ``since``, when given) or ``timeout`` (False)."""
        return self._listening().wait(channel, timeout, since)

    def lease(self, name: str) -> PgLease:
        return PgLease(self, name)

    def close(self) -> None:
        with self._listener_lock:
            if self._listener is not None:
                self._listener.stop()
                self._listener = None


CHANNELS = ("annuaire_changes", "annuaire_crls")


class _Listener:
    """One LISTEN connection per process, on its own thread; any number of waiters per channel."""

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        self.counts = dict.fromkeys(CHANNELS, 0)
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        psycopg = self.backend.psycopg
        while not self.stopping:
            try:
                conn = psycopg.connect(self.backend.url, autocommit=True, connect_timeout=10)
            except psycopg.Error:
                threading.Event().wait(1.0)
                continue
            try:
                for channel in CHANNELS:
                    conn.execute(f"LISTEN {channel}")
                self._bump(CHANNELS)  # (re)connected: whatever happened meanwhile, look again
                while not self.stopping:
                    ready, _, _ = select.select([conn.fileno()], [], [], 1.0)
                    if ready:
                        self._bump(tuple(n.channel for n in conn.notifies(timeout=0)))
            except (psycopg.Error, OSError, ValueError):
                threading.Event().wait(0.5)
            finally:
                with contextlib.suppress(Exception):
                    conn.close()

    def _bump(self, channels: tuple[str, ...]) -> None:
        if channels:
            with self.cond:
                for channel in channels:
                    self.counts[channel] = self.counts.get(channel, 0) + 1
                self.cond.notify_all()

    def wait(self, channel: str, timeout: float, since: int | None = None) -> bool:
        with self.cond:
            seen = self.counts.get(channel, 0) if since is None else since
            return self.cond.wait_for(lambda: self.counts.get(channel, 0) != seen, timeout)

    def stop(self) -> None:
        self.stopping = True


class PgLease:
    """An exclusive lease on ``name``: a session advisory lock on a connection of its own. The server
    drops it when the holder's connection dies (process killed, machine gone), so another node's next
    ``try_acquire`` gets it."""

    def __init__(self, backend: PostgresBackend, name: str) -> None:
        self.backend = backend
        self.name = name
        self.key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        self.conn: Any = None

    def try_acquire(self) -> bool:
        """True while this process holds the lease (checked on the wire, not assumed)."""
        psycopg = self.backend.psycopg
        if self.conn is not None:
            try:
                self.conn.execute("SELECT 1").fetchone()
                return True
            except psycopg.Error:
                self.release()
        try:
            conn = psycopg.connect(self.backend.url, autocommit=True, connect_timeout=10)
        except psycopg.Error:
            return False
        try:
            held = bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0])
        except psycopg.Error:
            held = False
        if held:
            self.conn = conn
        else:
            conn.close()
        return held

    def release(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()  # the lock goes with the session
            self.conn = None


class LocalLease:
    """SQLite: one machine; the callers' file locks keep processes apart. Always held."""

    def __init__(self, name: str) -> None:
        self.name = name

    def try_acquire(self) -> bool:
        return True

    def release(self) -> None:
        return None


_UPSERT = re.compile(r"INSERT OR REPLACE INTO (\w+) \(([^)]*)\)(.*)", re.S)
_CONFLICT_KEYS = {
    "ocsp_responses": ("issuer_id", "serial_hex", "hash_name"),
    "ldap_projection": ("certificate_id",),
    "ldap_state": ("name",),
    "crl_entries": ("issuer_id", "certificate_id"),
}


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """SQLite dialect → PostgreSQL: ``?`` → ``%s`` (literal ``%`` doubled), upserts, byte aggregation."""
    sql = sql.replace("%", "%%")
    match = _UPSERT.match(sql)
    if match:
        table, columns, rest = match.groups()
        keys = _CONFLICT_KEYS[table]
        names = [c.strip() for c in columns.split(",")]
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in names if c not in keys)
        sql = f"INSERT INTO {table} ({columns}){rest} ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    sql = sql.replace("CAST(group_concat(entry_der, '') AS BLOB)", "string_agg(entry_der, ''::bytea)")
    return sql.replace("?", "%s")


def _scrub(text: str, url: str) -> str:
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


def backend_for(location: Path | str) -> SqliteBackend | PostgresBackend:
    """``sqlite:///PATH``, a plain path, or ``postgresql://…`` / ``postgres://…``."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresBackend(text)
    if text.startswith("sqlite:///"):
        return SqliteBackend(Path(text[len("sqlite:///"):]))
    if "://" in text:
        raise BackendError(f"unsupported registry URL scheme in {text.split('://', 1)[0]}:// "
                           "(sqlite:///PATH or postgresql://...)")
    return SqliteBackend(Path(text))
