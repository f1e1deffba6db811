"""A one-line progress indicator for long commands (import, crl build, ldap sync/verify)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """A one-line progress indicator on stderr, shown only on a terminal."""

    def __init__(self, label: str, stream: TextIO = sys.stderr, unit: str = "files") -> None:
        self.label = label
        self.unit = unit
        self.stream = stream
        self.enabled = stream.isatty()
        self.start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        rate = done / max(time.monotonic() - self.start, 1e-6)
        width = 30
        filled = int(width * done / total) if total else width
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {self.unit} "
                          f"({rate:,.0f}/s)")
        self.stream.flush()

    def status(self, text: str) -> None:
        """A stage of a long operation without a count (a CRL being signed, say)."""
        if self.enabled:
            elapsed = time.monotonic() - self.start
            self.stream.write(f"\r\033[K{self.label}: {text} ({elapsed:.1f} s)")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
