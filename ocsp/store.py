"""Where the pre-signed SHA-1 answers live: in the process's memory, or in a memory-mapped LMDB file.

With ``[http] workers = 1`` one process signs and serves: a dictionary per issuer (``MemoryStore``), as
always. With several serving processes (``directory/service/workers.py``) the main process (the pre-signer)
writes the answers into one LMDB file (``LmdbStore``) that every worker maps read-only: the pages sit once
in the page cache whatever the number of workers, a write is committed before the main process goes on, and
each look-up opens a fresh read transaction, so a worker sees a revocation's re-signed answer (or the
answer's removal) as soon as the main process committed it.

Keys are the responder's canonical key, (issuer, hash algorithm, serial) as ``issuer/sha1/serial-hex``;
values ``thisUpdate, nextUpdate`` (8 bytes each), then the signed part (ResponseData + signature). The
responder's certificates, constant per issuer, are attached on the way out (``response.assemble``), as in
memory: a value stays under LMDB's overflow-page threshold (a few hundred bytes, several per 4 KiB page)
instead of a page each. The file is a cache: it is created empty at each start and filled from the
registry's persisted answers, so nothing signed under another configuration survives in it.
"""

from __future__ import annotations

import shutil
import struct
import threading
from pathlib import Path
from typing import Protocol

from ocsp import response as resp

Held = tuple[bytes, int, int, bytes]  # (whole OCSPResponse, thisUpdate, nextUpdate, signature tail: the ETag)
_HEADER = struct.Struct("<qq")
MAP_SIZE = 1 << 36  # address space reserved for the file (64 GiB): grows on disk only as answers are written
TAIL = 16


class PresignedStore(Protocol):
    """Pre-signed SHA-1 answers, one per certificate, keyed by (issuer, serial).

    ``get(..., unless=tail)``: when the held answer's signature tail is ``tail`` (the caller's copy is still
    the one held), ``(b"", thisUpdate, nextUpdate, tail)`` without building the response again.
    """

    def get(self, issuer: str, serial: int, unless: bytes = b"") -> Held | None: ...

    def put(self, issuer: str, serial: int, signed: bytes, this_update: int, next_update: int) -> None: ...

    def pop(self, issuer: str, serial: int) -> None: ...

    def window(self, issuer: str, serial: int) -> tuple[int, int] | None: ...

    def counts(self) -> dict[str, int]: ...

    def close(self) -> None: ...


def key(issuer: str, serial: int, hash_name: str = "sha1") -> bytes:
    return f"{issuer}/{hash_name}/{serial:x}".encode()


class MemoryStore:
    """One process: ``{issuer: {serial: (signed part, thisUpdate, nextUpdate)}}``."""

    def __init__(self, certs: dict[str, bytes]) -> None:
        self.certs = certs  # issuer -> the certs field its answers carry
        self.entries: dict[str, dict[int, tuple[bytes, int, int]]] = {name: {} for name in certs}

    def get(self, issuer: str, serial: int, unless: bytes = b"") -> Held | None:
        hit = self.entries[issuer].get(serial)
        if hit is None:
            return None
        signed, this_update, next_update = hit
        tail = signed[-TAIL:]
        if tail == unless:
            return b"", this_update, next_update, tail
        return resp.assemble(signed, self.certs[issuer]), this_update, next_update, tail

    def put(self, issuer: str, serial: int, signed: bytes, this_update: int, next_update: int) -> None:
        self.entries[issuer][serial] = (signed, this_update, next_update)

    def pop(self, issuer: str, serial: int) -> None:
        self.entries[issuer].pop(serial, None)

    def window(self, issuer: str, serial: int) -> tuple[int, int] | None:
        hit = self.entries.get(issuer, {}).get(serial)
        return (hit[1], hit[2]) if hit is not None else None

    def counts(self) -> dict[str, int]:
        return {issuer: len(entries) for issuer, entries in self.entries.items()}

    def close(self) -> None:
        pass


class LmdbReader:
    """A serving process's read-only view of the shared file."""

    def __init__(self, path: Path, certs: dict[str, bytes]) -> None:
        import lmdb

        self.certs = certs
        # lock=True: readers register in the lock file, so the writer never reuses pages a reader still sees
        self.env = lmdb.open(str(path), subdir=False, readonly=True, lock=True, map_size=MAP_SIZE,
                             max_readers=1024, readahead=False)

    def get(self, issuer: str, serial: int, unless: bytes = b"") -> Held | None:
        certs = self.certs.get(issuer)
        if certs is None:
            return None
        with self.env.begin(buffers=True) as txn:  # a fresh snapshot: the latest commit of the writer
            value = txn.get(key(issuer, serial))
            if value is None:
                return None
            this_update, next_update = _HEADER.unpack_from(value)
            tail = bytes(value[-TAIL:])
            if tail == unless:
                return b"", this_update, next_update, tail
            signed = bytes(value[_HEADER.size:])
        return resp.assemble(signed, certs), this_update, next_update, tail

    def window(self, issuer: str, serial: int) -> tuple[int, int] | None:
        with self.env.begin(buffers=True) as txn:
            value = txn.get(key(issuer, serial))
            return _HEADER.unpack_from(value) if value is not None else None  # type: ignore[return-value]

    def close(self) -> None:
        self.env.close()


class LmdbStore(LmdbReader):
    """The main process's side: the only writer. Counts are its own (the workers never write)."""

    def __init__(self, path: Path, certs: dict[str, bytes]) -> None:
        import lmdb

        self.certs = certs
        self.path = path
        path.unlink(missing_ok=True)
        Path(str(path) + "-lock").unlink(missing_ok=True)
        # sync=False: a cache rebuilt at every start needs no fsync; metasync too. writemap=False keeps the
        # writer's RSS to what it reads (written pages go through write(2) into the shared page cache).
        self.env = lmdb.open(str(path), subdir=False, map_size=MAP_SIZE, max_readers=1024, sync=False,
                             metasync=False, readahead=False, lock=True)
        self._counts = {name: 0 for name in certs}
        self._lock = threading.Lock()
        self._closed = False

    def put(self, issuer: str, serial: int, signed: bytes, this_update: int, next_update: int) -> None:
        self.put_many([(issuer, serial, signed, this_update, next_update)])

    def put_many(self, rows: list[tuple[str, int, bytes, int, int]]) -> None:
        """One write transaction for many answers (the start-up load)."""
        with self._lock:
            if self._closed:  # a signature finishing during shutdown
                return
            self._put(rows)

    def _put(self, rows: list[tuple[str, int, bytes, int, int]]) -> None:
        with self.env.begin(write=True) as txn:
            for issuer, serial, signed, this_update, next_update in rows:
                if txn.replace(key(issuer, serial), _HEADER.pack(this_update, next_update) + signed) is None:
                    self._counts[issuer] += 1

    def pop(self, issuer: str, serial: int) -> None:
        with self._lock:
            if self._closed:
                return
            with self.env.begin(write=True) as txn:
                if txn.pop(key(issuer, serial)) is not None:
                    self._counts[issuer] -= 1

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def close(self) -> None:
        """Close and delete the file: a cache, rebuilt at the next start (a later ``workers = 1`` leaves
        none behind)."""
        with self._lock:
            self._closed = True
            self.env.close()
        remove(self.path)

    def reclaim_readers(self) -> int:
        """Free the reader slots of processes that died mid-read (a crashed worker), so their snapshot
        does not pin old pages; returns how many."""
        return self.env.reader_check()

    def size(self) -> int:
        """Bytes the file uses (pages in use, not the reserved map)."""
        info, stat = self.env.info(), self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"]


def remove(path: Path) -> None:
    """Delete the file and its lock (a clean stop: the next start rebuilds it)."""
    for p in (path, Path(str(path) + "-lock")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
