"""A binary output written behind by a thread of its own: a producer ahead of a slower reader through a pipe.

Why: ``annuaire ldap export --ldif | slapadd -q`` on two cores. A pipe holds 64 KiB; a process that writes
it directly, in larger chunks, takes turns with its reader instead of running beside it: each blocking write
returns only once the reader has drained the pipe down to its last bytes, and the reader then waits, the pipe
empty, while the writer makes the next chunk (measured: the pair used one core between them, wall time = the
sum of their CPU times, bench/RESULTS.md). Here the writes go into a bounded queue (``depth`` chunks, 8 MiB)
that a thread drains with ``os.write`` (the GIL released while the kernel waits for the reader), and the pipe
is grown to the size an unprivileged process may give it (``/proc/sys/fs/pipe-max-size``, 1 MiB by default:
the reader keeps that much to work on while the thread waits for the GIL to write the next chunk).

Failures are the caller's as before: a write error (EPIPE when the reader died) is raised by the next
``write`` or by ``close``, which also waits for every queued byte to be written. ``close`` is the end: a
caller that must know the reader got everything (the export marks the registry only then) closes first.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import queue
import stat
import threading
from pathlib import Path

CHUNK = 1 << 20  # bytes per queued write (the BufferedWriter's buffer in front of this stream)
DEPTH = 8  # chunks queued at most: how far the producer may run ahead (8 MiB)
PIPE_MAX = Path("/proc/sys/fs/pipe-max-size")


def grow_pipe(fd: int) -> int:
    """Grow ``fd``'s pipe to the largest size allowed without privileges; its size (0: not a pipe, or not
    Linux, where pipes have no settable size)."""
    if not stat.S_ISFIFO(os.fstat(fd).st_mode) or not hasattr(fcntl, "F_SETPIPE_SZ"):
        return 0
    try:
        wanted = int(PIPE_MAX.read_text())
    except (OSError, ValueError):
        wanted = CHUNK
    with contextlib.suppress(OSError):  # EPERM over a user's pipe quota, EBUSY: the pipe stays as it is
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, wanted)
    return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


class WrittenBehind(io.RawIOBase):
    """A raw stream over ``fd`` (not closed here) whose writes a thread performs, in order."""

    def __init__(self, fd: int, depth: int = DEPTH) -> None:
        super().__init__()
        self._fd = fd
        self._queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._drain, name="output", daemon=True)
        self._thread.start()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._error is not None:
            raise self._error
        chunk = bytes(data)  # the BufferedWriter reuses its buffer: a copy goes into the queue
        self._queue.put(chunk)
        return len(chunk)

    def _drain(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drop the rest: the producer sees the error at its next write
            try:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._fd, view):]
            except Exception as exc:  # kept for the producer; the thread goes on emptying the queue, so a
                self._error = exc  # producer blocked on a full one is never left waiting

    def close(self) -> None:
        """Wait until every queued byte is written; raise the first write error."""
        if self.closed:
            return
        self._queue.put(None)
        self._thread.join()
        super().close()
        if self._error is not None:
            raise self._error


def written_behind(fd: int) -> io.BufferedWriter:
    """A buffered binary stream over ``fd`` written by a thread, ``fd``'s pipe grown when it is one."""
    grow_pipe(fd)
    return io.BufferedWriter(WrittenBehind(fd), buffer_size=CHUNK)
