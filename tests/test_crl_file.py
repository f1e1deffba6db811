"""The CRL's temporary file (``directory.crl.crlfile``): the TBS written before the signature is known, the
header and the signature around it after, the same bytes as one write in order whatever the guess was."""

from __future__ import annotations

from pathlib import Path

import pytest

from directory import der
from directory.crl.crlfile import CrlFile


@pytest.mark.parametrize(("size", "tail", "guess"), [
    (1000, 300, 300),  # the guess right
    (65536 - 400, 300, 300),  # right, just under a length boundary
    (65536 - 400, 500, 300),  # wrong: the header is one byte longer than guessed, written again whole
    (65536 - 200, 100, 300),  # wrong the other way: one byte shorter
])
def test_the_file_is_header_tbs_tail_whatever_the_guess(tmp_path: Path, size: int, tail: int, guess: int) -> None:
    pieces = [bytes([n % 251]) * (size // 3) for n in range(3)]
    pieces.append(b"\x07" * (size - sum(map(len, pieces))))
    tbs = b"".join(pieces)
    path = tmp_path / ".x.crl.tmp"
    with CrlFile(path, pieces, size, guess) as out:
        written = out.finish(b"\x09" * tail)
        out.synced()
    expected = der.header(0x30, size + tail) + tbs + b"\x09" * tail
    assert path.read_bytes() == expected and written == len(expected)
    assert pieces == []  # let go once written


def test_synced_before_finish_is_an_error_and_close_is_idempotent(tmp_path: Path) -> None:
    with CrlFile(tmp_path / ".y.tmp", [b"\x01" * 10], 10, 20) as out:
        with pytest.raises(RuntimeError):
            out.synced()
        out.close()
    out.close()


def test_a_failed_early_fsync_is_not_hidden_by_the_last_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TBS is fsynced as soon as it is written, the whole file again at the end: after a failed fsync a
    later one can succeed with the data lost, so the first failure is the one raised."""
    import errno
    import os

    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "I/O error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with CrlFile(tmp_path / ".z.tmp", [b"\x01" * 1000], 1000, 20) as out:
        out.finish(b"\x02" * 20)
        with pytest.raises(OSError, match="I/O error"):
            out.synced()
    assert len(calls) == 2
