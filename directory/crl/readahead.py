"""`crl build`'s first CRL read while the command is still starting (imports, configuration, the HSM).

A fresh process spends a tenth of a second importing and reading its configuration before it builds: the
registry (SQLite, without the GIL) reads the first full CRL's entries meanwhile, on threads of their own
(``entryread.RunReader``), in a read transaction of a connection of their own. Where to read is taken from
the configuration file's text alone (``start``: the registry's path, the first issuer built and whether it
keeps expired certificates): a guess, which the builder compares with what the validated configuration
says before it uses anything read (``CrlPublisher``: same registry file, issuer, cut-off and target, else
the read is dropped and the build reads as usual).

The entries read and the CRL number are one view: the number is allocated in the read's own transaction
(``Crls.crl_allocate_in``), which SQLite refuses when another connection committed anything since the read
began; the build then allocates as usual and reads again (a revocation committed before the number is
listed, never one committed after). The file read is known by device and inode: one replaced meanwhile
(a backup moved into place) is not numbered in (``same_file``). Only the standard library, ``entryread``
and ``registry.snapshot`` (standard library only themselves) are imported here before the read begins
(``CrlBuildError``'s module, with cryptography, once the entries are read).

The builder's side is here too, given the publisher's registry, walk cache and counts: whether a read is
what the build would read (``usable``), and its entries checked and the number allocated in its snapshot
(``number_in``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from directory.crl.entryread import RunReader, check_runs
from directory.registry.snapshot import SQLITE_PRAGMAS, CrlSnapshot

if TYPE_CHECKING:  # the builder's types: cryptography and the registry's store are not imported here
    from directory.crl.builder import CrlStats
    from directory.crl.entrycheck import WalkCache
    from directory.publication import Target
    from directory.registry import Registry
    from directory.registry.store import CrlRecord

log = logging.getLogger(__name__)


class ReadAheadUnusable(Exception):
    """The guess did not fit the registry (no such file, issuer or table yet): the build reads as usual."""


class ReadAhead:
    """The entries of ``issuer``'s full CRL (main scope) in ``path``'s registry, read from now on."""

    def __init__(self, path: Path, issuer: str, keep_expired: bool, now: int | None = None) -> None:
        self.path = path
        self.issuer = issuer
        self.keep_expired = keep_expired
        self.now = int(time.time()) if now is None else now  # the CRL's thisUpdate and cut-off, when the read is used
        self.snapshot: CrlSnapshot | None = None  # once its transaction began
        self.identity: tuple[int, int] | None = None  # (device, inode) of the file read, once opened
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # the connection: opened on the reading thread, closed on another
        self._closed = False
        self.reader = RunReader(self._runs, hash_here=True)

    def _runs(self) -> Iterator[tuple[int, bytes]]:
        try:
            with self._lock:
                if self._closed:
                    raise ReadAheadUnusable("dropped before it began")
                before = _identity(self.path)
                # mode=rw: never creates the file (the registry does, with its folder's permissions)
                conn = self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=rw", uri=True,
                                                    isolation_level=None, timeout=30.0, check_same_thread=False)
                if before is None or _identity(self.path) != before:
                    raise ReadAheadUnusable("the registry file was replaced while it was opened")
                self.identity = before
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                raise ReadAheadUnusable("registry not in WAL mode yet")
            for pragma in SQLITE_PRAGMAS:
                conn.execute(pragma)
            conn.execute("BEGIN")
            row = conn.execute("SELECT id FROM issuers WHERE name = ?", (self.issuer,)).fetchone()
            if row is None:
                raise ReadAheadUnusable(f"issuer {self.issuer} not in the registry yet")
            snapshot = self.snapshot = CrlSnapshot(conn, int(row[0]))
        except sqlite3.Error as exc:  # the build's own opening says what is wrong, if anything is
            raise ReadAheadUnusable(str(exc)) from None
        try:
            for run in snapshot.full_entry_runs(None if self.keep_expired else self.now):
                if self._closed:  # dropped: not worth reading on
                    raise ReadAheadUnusable("dropped")
                yield run
        except sqlite3.OperationalError as exc:
            if str(exc).startswith("no such "):  # a registry before its migration (the build migrates it)
                raise ReadAheadUnusable(str(exc)) from None
            raise

    def fits(self, registry_path: Path | None, issuer: str, keep_expired: bool, partition: object,
             kind: str) -> bool:
        """True when what was read is what the build of that target would read (then in this snapshot)."""
        return (registry_path is not None and registry_path.resolve() == self.path.resolve()
                and (issuer, keep_expired, partition, kind) == (self.issuer, self.keep_expired, None, "full"))

    def same_file(self, path: Path) -> bool:
        """Whether ``path`` is still the file that was read: not replaced since (a backup moved into place). A
        number allocated in a replaced file would be lost to the file in place, whose next build could then
        take it again."""
        return self.identity is not None and _identity(path) == self.identity

    def close(self) -> None:
        """The reading finished (waited for) and its transaction ended (rolled back unless committed)."""
        with self._lock:
            self._closed = True
        self.reader.close()
        if self._conn is not None:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None


class Read(NamedTuple):
    """A full CRL's entries read and checked before its number was allocated (in the same snapshot)."""

    entries: int
    checked: int
    chunks: list[bytes]
    change_seq: int
    seconds: float


def usable(ahead: ReadAhead | None, registry_path: Path | None, issuer: str, keep_expired: bool,
           target: Target) -> ReadAhead | None:
    """``ahead`` when it read what the build of ``target`` would read, else None (and the read dropped: it is
    used by one build at most, the first)."""
    if ahead is None or ahead.fits(registry_path, issuer, keep_expired, target.partition, target.kind):
        return ahead
    ahead.close()
    return None


def number_in(ahead: ReadAhead, registry: Registry, issuer: str, target: Target, now: int, validity: int,
              walks: WalkCache, stats: CrlStats,
              on_stage: Callable[[str], None] | None = None) -> tuple[CrlRecord, Read] | None:
    """The entries read ahead, checked (``walks``: the publisher's walk cache of ``target``), and the number
    allocated in their snapshot (one view: see the module's docstring); None when they were out of date or
    the guess did not fit the registry (the build then allocates and reads as usual). A read that fails
    fails the build (counted in ``stats``) before it has a number: nothing is written. ``ahead`` is closed."""
    from directory.crl.selfcheck import CrlBuildError  # cryptography: imported once the entries are read

    at = time.monotonic()
    try:
        if on_stage is not None:
            on_stage(f"{target.filename}: reading entries")
        try:
            entries, checked = check_runs(ahead.reader, walks)
        except ReadAheadUnusable as exc:
            log.debug("%s: entries not read ahead (%s)", target.filename, exc)
            return None
        except Exception as exc:
            stats.failed += 1
            log.error("CRL %s not published (no number allocated): %s", target.filename, exc)
            raise CrlBuildError(f"{target.filename}: reading the entries: {exc}") from exc
        assert ahead.snapshot is not None
        if registry.path is None or not ahead.same_file(registry.path):
            log.warning("%s: the registry file was replaced while its entries were read ahead; read again",
                        target.filename, extra={"issuer": issuer})
            return None
        record = registry.crl_allocate_in(ahead.snapshot, issuer, target.kind, now, now + validity)
        if record is None:
            log.info("%s: the registry changed while its entries were read ahead; read again", target.filename,
                     extra={"issuer": issuer})
            return None
        return record, Read(entries, checked, ahead.reader.chunks, ahead.snapshot.change_seq,
                            time.monotonic() - at)
    finally:
        ahead.close()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def start(config: Path | None, issuer: str | None) -> ReadAhead | None:
    """The read of the first CRL that `crl build --config CONFIG [--issuer ISSUER]` builds, begun; None when
    the file does not say plainly (a PostgreSQL registry, a credential path, a file that does not parse:
    the configuration's validation says what is wrong, the build reads as usual)."""
    import tomllib

    if config is None:
        return None
    try:
        file = config.resolve()
        raw = tomllib.loads(file.read_text())
        url = raw.get("registry", {}).get("url")
        if url is None:
            data_dir = raw.get("data_dir", "data")
            if not isinstance(data_dir, str) or data_dir.startswith("credential:"):
                return None
            path = file.parent / data_dir / "registry.sqlite3"
        elif isinstance(url, str) and url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
        else:
            return None
        found = [i for i in raw.get("issuers", []) if isinstance(i, dict) and i.get("key_label")
                 and (issuer is None or i.get("name") == issuer)]
        if not found or not isinstance(found[0].get("name"), str):
            return None
        keep_expired = found[0].get("crl", {}).get("keep_expired", False)
        if not isinstance(keep_expired, bool):
            return None
        return ReadAhead(path, found[0]["name"], keep_expired)
    except (OSError, ValueError, AttributeError, TypeError, RecursionError):
        return None  # (load_config says what is wrong, a RecursionError too)
