"""A full CRL's entries read from the registry and checked, three threads at once.

The registry reads the runs of entries (``CrlSnapshot.full_entry_runs``: SQLite concatenates them,
without the GIL) on a thread of its own; a second thread hashes each run (the ``WalkCache`` key: off the
checking thread, the longest of the three when nothing was checked before); the caller's thread walks
and parses each run (``RunCheck``) while the next is read. Once the last run is read, the TBS is framed
around them all (its lengths then known) and its digest started, while the last run is still being checked.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cryptography's parsers only once the runs are checked: `crl build` starts reading before
    from directory.crl.entrycheck import WalkCache

Run = tuple[int, bytes, "Future[bytes]"]  # entries, their DER, its SHA-256 (being computed)


class RunReader:
    """The runs of ``source`` read on a thread ('crl-read'), each hashed on another ('crl-hash')."""

    def __init__(self, source: Callable[[], Iterable[tuple[int, bytes]]],
                 frame: Callable[[list[bytes], int], list[bytes]] | None = None,
                 digest: Callable[[list[bytes]], bytes] | None = None, hash_here: bool = False) -> None:
        """``frame``: the TBS's pieces around the runs and their count, ``digest`` its hash (both once the last
        run is read; ``tbs`` then holds them). ``hash_here``: each run hashed on the reading thread itself (a
        read ahead of its checker: one thread fewer to wake per run)."""
        self._hash_here = hash_here
        self._source = source
        self._frame = frame
        self._digest = digest
        self.hashing = ThreadPoolExecutor(1, thread_name_prefix="crl-hash")
        self.chunks: list[bytes] = []  # every run read, in order
        self.count = 0
        self.tbs: tuple[list[bytes], Future[bytes]] | None = None  # set before the reader's end is seen
        self._runs: queue.SimpleQueue[Run | BaseException | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._read, name="crl-read", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for n, blob in self._source():
                self.chunks.append(blob)
                self.count += n
                if self._hash_here:
                    key: Future[bytes] = Future()
                    key.set_result(_sha256(blob))
                else:
                    key = self.hashing.submit(_sha256, blob)
                self._runs.put((n, blob, key))
            if self._frame is not None and self._digest is not None:
                pieces = self._frame(self.chunks, self.count)
                self.tbs = pieces, self.hashing.submit(self._digest, pieces)
            self._runs.put(None)
        except BaseException as exc:  # handed to the checking thread, raised there
            self._runs.put(exc)

    def runs(self) -> Iterable[Run]:
        """Each run as it is read (an error of the reading thread raised here)."""
        while (item := self._runs.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def join(self) -> None:
        """Wait for the reading thread (whatever it read on is then free for another thread)."""
        self._thread.join()

    def close(self) -> None:
        """The reading thread done; the digests under way go on (the file is written meanwhile)."""
        self.join()
        self.hashing.shutdown(wait=False)


def check_runs(reader: RunReader, cache: WalkCache) -> tuple[int, int]:
    """(entries read, entries checked): each run walked and parsed as it comes (``RunCheck``); the reader
    joined whatever happens."""
    from directory.crl.entrycheck import RunCheck
    from directory.crl.selfcheck import CrlBuildError

    check = RunCheck(cache)
    entries = 0
    try:
        for count, blob, key in reader.runs():
            entries += count
            check.add(blob, count, key.result())
        return entries, check.finish()
    except (ValueError, IndexError) as exc:
        raise CrlBuildError(f"an entry does not parse: {exc}") from None
    finally:
        reader.close()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
