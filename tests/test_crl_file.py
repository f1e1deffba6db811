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
