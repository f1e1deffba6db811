"""A CRL's temporary file, written around its signature so that the disk work overlaps the rest of the build.

The TBS is written (on a thread, without the GIL) as soon as it is built, while it is hashed for the HSM, and
fsynced at once on that thread: tens of megabytes take the disk tens of milliseconds, spent while the TBS is
hashed, signed and checked instead of after. The outer header and the signature follow once signed; the
last fsync (a few bytes more to flush) runs on the thread while the self-check reads the file back (the same
bytes, from the page cache), and is waited for before the file may be installed.

The TBS sits after the outer header, whose length depends on the signature's (ECDSA's varies by a byte or
two): it is written where a typical signature puts it, and when that guess is wrong (a total length right at
a power of 256) the file is written again whole. Nothing here is served: the file is dot-named until the
builder installs it.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from directory import der


class CrlFile:
    """``path`` being written: the TBS ``pieces`` (``size`` bytes) first, then ``finish``, then ``synced``."""

    def __init__(self, path: Path, pieces: list[bytes], size: int, tail_guess: int) -> None:
        self.path = path
        self.pieces = pieces
        self.size = size
        self.offset = len(der.header(0x30, size + tail_guess))  # where the TBS goes
        self._out = open(path, "wb")  # noqa: SIM115 - closed by ``synced`` or ``close``
        self._io = ThreadPoolExecutor(1, thread_name_prefix="crl-write")
        self._body: Future[None] = self._io.submit(self._write_at, self.offset, pieces)
        self._early = self._io.submit(os.fsync, self._out.fileno())  # the bulk on disk while the build goes on
        self._sync: Future[None] | None = None

    def _write_at(self, offset: int, pieces: list[bytes]) -> None:
        self._out.seek(offset)
        for piece in pieces:
            self._out.write(piece)
        self._out.flush()  # in the file (the fsync after it sees every byte), before ``finish`` writes

    def finish(self, tail: bytes) -> int:
        """Write the header and ``tail`` (algorithm, signature) and start the last fsync; the file's size. The
        TBS pieces are let go (the self-check reads the file back: never two copies in memory). The early fsync
        may still be running: it only reads the descriptor, and the last one is queued after it."""
        self._body.result()
        header = der.header(0x30, self.size + len(tail))
        if len(header) == self.offset:
            self._out.seek(0)
            self._out.write(header)
            self._out.seek(self.offset + self.size)
            self._out.write(tail)
        else:
            self._out.seek(0)
            self._out.truncate()
            self._write_at(0, [header, *self.pieces, tail])
        self._out.flush()
        self.pieces.clear()
        self._sync = self._io.submit(os.fsync, self._out.fileno())
        return len(header) + self.size + len(tail)

    def synced(self) -> None:
        """Wait for both fsyncs (an error of either raised here: after a failed fsync, a later one may well
        succeed with the data lost) and close the file."""
        if self._sync is None:
            raise RuntimeError("the CRL file was not finished")
        self._early.result()
        self._sync.result()
        self.close()

    def close(self) -> None:
        """Let whatever runs finish, and close the file (idempotent)."""
        self._io.shutdown(wait=True)
        self._out.close()

    def __enter__(self) -> CrlFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
