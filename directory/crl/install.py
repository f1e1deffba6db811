"""Putting a CRL in place: one issuer's CRL folder, its lock, its archive and the atomic install.

Every CRL that is served goes through here, the ones built and signed by this service (``builder``) and
the ones signed elsewhere and handed in (``publish``: an offline root's ARL, a moved CA's last CRL): under
a per-issuer file lock (several builders, several processes), the file is hard-linked into the archive and
renamed into place, then the folder is fsynced. Readers (the HTTP side, the directory's CA entries) only
ever see a whole file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path


class CrlFolder:
    """The published CRL files of one issuer in ``directory`` (``archive/NAME-NUMBER.crl`` beside them)."""

    def __init__(self, directory: Path, issuer: str, keep: int) -> None:
        self.dir = directory
        self.issuer = issuer
        self.keep = keep  # archived CRLs kept per file name
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "archive").mkdir(exist_ok=True)

    def temporary(self, filename: str, number: int, what: str = "") -> Path:
        """A temporary file name in the folder (dot-named: never served, removed when stale)."""
        return self.dir / f".{filename}.{number}{what}.tmp"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The issuer's install lock (held while the registry is checked and the file renamed)."""
        with open(self.dir / f".{self.issuer}.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def install(self, tmp: Path, filename: str, number: int) -> Path:
        """Archive ``tmp`` as ``NAME-NUMBER.crl`` and rename it to ``filename`` (call under ``lock``)."""
        final = self.dir / filename
        archived = self.dir / "archive" / f"{final.stem}-{number}{final.suffix}"
        if not archived.exists():
            os.link(tmp, archived)
        os.replace(tmp, final)
        fsync_dir(self.dir)
        return final

    def prune(self, filename: str) -> None:
        """Keep the newest ``keep`` archived CRLs of this file name."""
        final = Path(filename)
        pattern = re.compile(rf"^{re.escape(final.stem)}-(\d+){re.escape(final.suffix)}$")
        numbered = sorted((int(m.group(1)), p) for p in (self.dir / "archive").iterdir()
                          if (m := pattern.match(p.name)))
        for _, old in numbered[:-self.keep] if self.keep else numbered:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()

    def highest_archived(self, filenames: Iterable[str]) -> int:
        """The highest CRL number ever installed from this machine under these file names (the live file is
        always archived too): a registry restored from an older backup must not hand out a number that
        relying parties have already seen."""
        highest = 0
        for filename in filenames:
            pattern = re.compile(rf"^{re.escape(Path(filename).stem)}-(\d+)\.crl$")
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(self.dir / "archive"):
                    match = pattern.match(entry.name)
                    if match:
                        highest = max(highest, int(match.group(1)))
        return highest

    def remove_stale_temporaries(self, older_than: float = 3600) -> None:
        """Temporary files of builds killed mid-write (never served: their names start with a dot)."""
        limit = time.time() - older_than
        for tmp in self.dir.glob(f".{self.issuer}*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if tmp.stat().st_mtime < limit:
                    tmp.unlink()


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (a temporary file about to be installed)."""
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
