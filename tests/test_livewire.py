"""The serving processes' channel to the main process's signer (``directory/service/livewire.py``), on a real
unix socket: many requests in flight on one connection, answered out of order and matched by number; a
malformed or oversized frame drops the connection and the waiting requests fail (their callers answer
tryLater); a new connection is opened on the next request; an answer that fails is internalError for its
request alone; no answer in time is a timeout, not a lost connection. The whole path with the HSM is in
test_workers."""

from __future__ import annotations

import asyncio
import random
import struct
from pathlib import Path

import pytest

from directory.service.livewire import MAX_FRAME, LiveClient, LiveServer
from ocsp.lookup import Outcome

_delays = random.Random(15)


async def _answer(received: bytes | str) -> Outcome:
    body = received.encode() if isinstance(received, str) else received
    if body == b"never answered":
        await asyncio.Event().wait()
    if body == b"fails":
        raise RuntimeError("a bug in the signer")
    await asyncio.sleep(_delays.random() / 100)  # signed in any order
    return Outcome(b"answer to " + body, "successful", "live", 1, 2, b"\x01")


async def test_requests_in_flight_are_matched_to_their_answers(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    server = await asyncio.get_running_loop().create_unix_server(lambda: LiveServer(_answer), path)
    client = LiveClient(path)
    try:
        asks = [client.ask("post" if n % 2 else "get", b"request %d" % n) for n in range(500)]
        answers = await asyncio.gather(*asks)
        assert [a.body for a in answers] == [b"answer to request %d" % n for n in range(500)]
        assert answers[0].status == "successful" and (answers[0].this_update, answers[0].next_update) == (1, 2)
        # a request whose answer fails gets internalError; the others in flight on the connection are not touched
        mixed = await asyncio.gather(client.ask("post", b"before"), client.ask("post", b"fails"),
                                     client.ask("post", b"after"))
        assert [a.body for a in (mixed[0], mixed[2])] == [b"answer to before", b"answer to after"]
        assert mixed[1].status == "internalError"
    finally:
        client.close()
        server.close()


async def test_a_malformed_frame_drops_the_connection_and_the_next_request_reconnects(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    server = await asyncio.get_running_loop().create_unix_server(lambda: LiveServer(_answer), path)
    client = LiveClient(path, timeout=5)
    try:
        assert (await client.ask("post", b"first")).body == b"answer to first"
        protocol = client._protocol
        assert protocol is not None
        waiting = asyncio.ensure_future(client.ask("post", b"never answered"))
        await asyncio.sleep(0)
        protocol.transport.write(struct.pack(">IIB", 7, MAX_FRAME + 1, 0))  # oversized: dropped at once
        with pytest.raises(ConnectionError):
            await waiting
        assert (await client.ask("get", b"again")).body == b"answer to again"
        assert client._protocol is not protocol
        client._protocol.transport.write(struct.pack(">IIB", 8, 1, 9) + b"x")  # an unknown kind
        await asyncio.sleep(0.1)
        assert client._protocol.lost
    finally:
        client.close()
        server.close()


async def test_no_main_process_is_a_connection_error_and_no_answer_a_timeout(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError):
        await LiveClient(str(tmp_path / "absent.sock")).ask("post", b"x")
    path = str(tmp_path / "live.sock")
    servers: list[LiveServer] = []

    def made() -> LiveServer:
        servers.append(LiveServer(_answer))
        return servers[-1]

    server = await asyncio.get_running_loop().create_unix_server(made, path)
    client = LiveClient(path, timeout=0.2)
    try:
        with pytest.raises(TimeoutError):  # the caller answers tryLater without asking again
            await client.ask("post", b"never answered")
        assert len(servers[0].tasks) == 1
        client.close()
        await asyncio.sleep(0.1)
        assert not servers[0].tasks  # what was being signed for a connection gone is cancelled
    finally:
        server.close()
