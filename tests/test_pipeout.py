"""directory.cli.pipeout: a binary output written behind by a thread, for ``ldap export --ldif | slapadd``."""

from __future__ import annotations

import fcntl
import os
import threading

import pytest

from directory.cli.pipeout import PIPE_MAX, grow_pipe, written_behind


def test_everything_arrives_in_order_through_a_grown_pipe() -> None:
    read, write = os.pipe()
    received: list[bytes] = []

    def reader() -> None:
        with os.fdopen(read, "rb") as stream:
            received.append(stream.read())

    thread = threading.Thread(target=reader)
    thread.start()
    records = [b"%d\n" % i * (i % 97) for i in range(20000)]  # ~10 MB: more than the queue and the pipe
    with written_behind(write) as out:
        # not 64 KiB (the whole pipe-max-size, unless the user's pipe quota is used up)
        assert 65536 < fcntl.fcntl(write, fcntl.F_GETPIPE_SZ) <= int(PIPE_MAX.read_text())
        for record in records:
            out.write(record)
    os.close(write)
    thread.join(30)
    assert received == [b"".join(records)]
    null = os.open(os.devnull, os.O_WRONLY)
    assert grow_pipe(null) == 0  # not a pipe: left alone
    os.close(null)


def test_a_reader_gone_fails_the_writer() -> None:
    read, write = os.pipe()
    os.close(read)
    # raised at a later write or at close: never silently dropped
    with pytest.raises(BrokenPipeError), written_behind(write) as out:
        for _ in range(64):
            out.write(b"x" * 65536)
    os.close(write)
