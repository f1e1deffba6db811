"""Reading files from the CRL folder: regular files only, bounded, never blocking.

The folder is written by the builders (and by other nodes' copies), but anything could be dropped there:
a FIFO opened for reading blocks until a writer appears, and a reader thread stuck on one once hung every
part sharing its executor. The file is opened with ``O_NONBLOCK`` (a FIFO then opens at once) and
checked with ``fstat`` on the descriptor itself, so there is no window between the check and the read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_CRL_BYTES = 1 << 30  # a 10-million-entry CRL is ~370 MB


class NotRegularFile(OSError):
    """Not a regular file (FIFO, device, directory, socket): never read."""


def read_regular(path: Path, max_bytes: int = MAX_CRL_BYTES) -> bytes:
    """The bytes of ``path`` when it is a regular file of at most ``max_bytes``; ``OSError`` otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
        if st.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
    return data
