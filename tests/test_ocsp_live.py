"""The live lane (``ocsp.live``): answers reach their own requester, errors too, with few event-loop wake-ups."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from ocsp.live import LiveLane
from ocsp.lru import ByteLru
from ocsp.request import CertId, Request
from ocsp.responder import STATUS_ENTRY_OVERHEAD, LiveSlots, Outcome
from tests.conftest import run_cli
from tests.served import serve
from tests.test_ocsp import _pick, _post
from tests.test_ocsp import _request as _ocsp_request


def _request(n: int) -> Request:
    return Request((CertId("sha1", bytes(20), bytes(20), n),), n.to_bytes(4, "big"))


def _held_signer() -> tuple[list[int], threading.Event, Callable[[Request], Outcome]]:
    """A signer that records each serial it takes up, then waits for ``release`` (a stalled HSM): (serials taken
    up, release, the signer)."""
    signed: list[int] = []
    release = threading.Event()

    def answer(request: Request) -> Outcome:
        signed.append(request.cert_ids[0].serial)
        release.wait(5)
        return Outcome(b"%d" % request.cert_ids[0].serial, "successful", "live")

    return signed, release, answer


def _answer(request: Request) -> Outcome:
    time.sleep(0.0005)  # about a signature
    if request.cert_ids[0].serial % 7 == 3:
        raise ValueError(f"refused {request.cert_ids[0].serial}")
    assert request.nonce is not None
    return Outcome(request.nonce, "successful", "live")


def test_each_answer_reaches_its_requester_with_fewer_wakeups_than_answers() -> None:
    async def main() -> tuple[list[object], int]:
        lane = LiveLane(_answer, 2)
        lane.start(asyncio.get_running_loop())
        try:
            results = await asyncio.gather(*(lane.answer(_request(n)) for n in range(400)), return_exceptions=True)
            await asyncio.sleep(0)
            assert lane.backlog.waiting == 0  # answers and failures alike give their place back
        finally:
            await asyncio.get_running_loop().run_in_executor(None, lane.stop)
        return results, lane.wakeups

    results, wakeups = asyncio.run(main())
    for n, result in enumerate(results):
        if n % 7 == 3:
            assert isinstance(result, ValueError) and str(result) == f"refused {n}"
        else:
            assert isinstance(result, Outcome) and result.body == n.to_bytes(4, "big"), n
    assert wakeups < 400, wakeups  # answers that piled up while the loop was busy shared a wake-up
    assert not [t for t in threading.enumerate() if t.name.startswith("ocsp-live_")]


def test_a_requester_that_gave_up_does_not_disturb_the_others() -> None:
    async def main() -> None:
        lane = LiveLane(_answer, 1)
        lane.start(asyncio.get_running_loop())
        try:
            abandoned = asyncio.ensure_future(lane.answer(_request(1)))
            kept = asyncio.ensure_future(lane.answer(_request(2)))
            await asyncio.sleep(0)
            abandoned.cancel()
            assert (await kept).body == (2).to_bytes(4, "big")
            with pytest.raises(asyncio.CancelledError):
                await abandoned
        finally:
            await asyncio.get_running_loop().run_in_executor(None, lane.stop)

    asyncio.run(main())


def test_requests_given_up_before_a_thread_takes_them_are_not_signed() -> None:
    """The queue is not bounded by the slots: requests cancelled while waiting (a client gone, the direct
    path's request deadline) are skipped by the threads, not signed for nobody ahead of the others."""
    signed: list[int] = []
    busy = threading.Event()

    def answer(request: Request) -> Outcome:
        serial = request.cert_ids[0].serial
        signed.append(serial)
        if serial == 0:
            busy.wait(5)
        return Outcome(b"%d" % serial, "successful", "live")

    async def main() -> None:
        lane = LiveLane(answer, 1)
        lane.start(asyncio.get_running_loop())
        try:
            first = lane.submit(_request(0))
            given_up = [lane.submit(_request(n)) for n in range(1, 50)]
            kept = lane.submit(_request(50))
            for future in given_up:
                future.cancel()
            busy.set()
            assert (await first).body == b"0" and (await kept).body == b"50"
        finally:
            await asyncio.get_running_loop().run_in_executor(None, lane.stop)

    asyncio.run(main())
    assert signed == [0, 50]


def test_what_waits_for_the_signer_is_bounded_whatever_asks_for_it() -> None:
    """One bound per process (``LiveLane.backlog``): past ``cap`` requests waiting for the signer, from this
    process's connections or the serving processes', a request is answered tryLater at once (path ``shed``),
    never queued, and counted for its source; a request given up gives its place back as it is cancelled, and
    is never signed; a place comes back as each answer is handed over."""
    signed, release, answer = _held_signer()

    async def main() -> None:
        lane = LiveLane(answer, 1, cap=8)
        lane.start(asyncio.get_running_loop())
        backlog = lane.backlog
        try:
            local = [lane.submit(_request(n)) for n in range(5)]
            remote = [lane.submit(_request(n), "workers") for n in range(5, 9)]
            assert backlog.waiting == 8
            assert [f.done() for f in local + remote] == [False] * 8 + [True]
            shed = remote[-1].result()
            assert (shed.status, shed.path) == ("tryLater", "shed")
            extra = lane.submit(_request(99))
            assert extra.done() and extra.result().path == "shed"
            assert backlog.full == {"local": 1, "workers": 1} and backlog.waiting == 8
            local[3].cancel()  # given up (deadline, client gone): its place given back in the next turn, first
            remote[0].cancel()
            await asyncio.sleep(0)
            assert backlog.waiting == 6
            again = [lane.submit(_request(n), "workers") for n in (10, 11)]
            assert not any(f.done() for f in again) and backlog.waiting == 8
            release.set()
            answered = await asyncio.gather(*local[:3], local[4], *remote[1:3], *again)
            assert [int(a.body) for a in answered] == [0, 1, 2, 4, 6, 7, 10, 11]
            await asyncio.sleep(0)
            assert backlog.waiting == 0
        finally:
            release.set()
            await asyncio.get_running_loop().run_in_executor(None, lane.stop)
        after = lane.submit(_request(12))  # stopped: no thread would take it
        assert after.result().status == "tryLater" and backlog.waiting == 0 and backlog.full["local"] == 1

    asyncio.run(main())
    assert signed == [0, 1, 2, 4, 6, 7, 10, 11]  # 3 and 5, given up while waiting, never signed


def test_a_thread_takes_up_no_request_past_its_deadline() -> None:
    """The callers' deadline timers run on the event loop, which a signer keeping the GIL or a busy process can
    hold up; the lane's own deadline (``timeout`` after ``submit``) keeps a thread from signing what waited past
    it all the same: tryLater, counted once for its source, whoever gives it up first."""
    signed: list[int] = []

    def answer(request: Request) -> Outcome:
        signed.append(request.cert_ids[0].serial)
        if request.cert_ids[0].serial == 0:
            time.sleep(0.4)  # a signature held up past the deadline of those behind
        return Outcome(b"signed", "successful", "live")

    async def main() -> None:
        lane = LiveLane(answer, 1, timeout=0.2)
        lane.start(asyncio.get_running_loop())
        try:
            first = lane.submit(_request(0))
            behind = [lane.submit(_request(1), "workers"), lane.submit(_request(2))]
            given_up = lane.submit(_request(3))
            await asyncio.sleep(0.25)
            given_up.cancel()  # by its caller's timer, first: counted there, not again here
            assert (await first).status == "successful"
            assert [(a.status, a.path) for a in await asyncio.gather(*behind)] == [("tryLater", "error")] * 2
            assert lane.backlog.expired == {"local": 1, "workers": 1} and lane.backlog.waiting == 0
            assert (await lane.submit(_request(4))).status == "successful"
        finally:
            await asyncio.get_running_loop().run_in_executor(None, lane.stop)

    asyncio.run(main())
    assert signed == [0, 4]


def test_requests_given_up_in_numbers_do_not_grow_the_queue() -> None:
    """A stalled signer and clients that give up and ask again, each time a place given back: the requests
    cancelled stay in the thread's queue until taken (to be skipped), so they are swept out once they outnumber
    ``cap``; the living ones keep their order."""
    signed, release, answer = _held_signer()

    async def main() -> None:
        lane = LiveLane(answer, 1, cap=16)
        lane.start(asyncio.get_running_loop())
        try:
            kept = [lane.submit(_request(n)) for n in range(4)]
            for n in range(1000, 3000):
                lane.submit(_request(n)).cancel()
                await asyncio.sleep(0)
                assert lane._jobs.qsize() <= 2 * 16 + 1
            assert lane.backlog.waiting == 4
            release.set()
            assert [int(a.body) for a in await asyncio.gather(*kept)] == [0, 1, 2, 3]
        finally:
            release.set()
            await asyncio.get_running_loop().run_in_executor(None, lane.stop)

    asyncio.run(main())
    assert signed == [0, 1, 2, 3]


def test_a_live_answer_through_aiohttp_not_signed_in_time_is_try_later() -> None:
    """The aiohttp path's live answer (``OcspComponent._live``) waits ``live_timeout`` at most ([http]
    request_timeout), as the direct path's: then tryLater, and the signature given up is not made later."""
    from ocsp.http import OcspComponent

    signed: list[int] = []
    release = threading.Event()

    def answer(request: Request) -> Outcome:
        signed.append(request.cert_ids[0].serial)
        release.wait(5)
        return Outcome(b"signed", "successful", "live")

    async def main() -> None:
        component = OcspComponent()
        component.live = LiveLane(answer, 1)
        component.live.start(asyncio.get_running_loop())
        component.live_timeout = 0.2
        try:
            stuck = asyncio.ensure_future(component._live(b"", _request(1)))  # holds the only thread
            while not signed:
                await asyncio.sleep(0.01)
            behind = await component._live(b"", _request(2))
            assert behind.status == "tryLater" and (await stuck).status == "tryLater"
            assert component.live.backlog.expired == {"local": 2, "workers": 0}
            assert component.live.backlog.waiting == 0  # their places given back at once
            release.set()
            assert (await component._live(b"", _request(3))).status == "successful"
        finally:
            await asyncio.get_running_loop().run_in_executor(None, component.live.stop)

    asyncio.run(main())
    assert signed == [1, 3]


def test_nonce_answers_follow_status_changes_made_by_another_process(demo: Path) -> None:
    """Statuses read for live answers are remembered until the change log says otherwise: a revocation and a
    released hold, made by the command line (another process), show in nonce answers within a second."""
    with serve(demo) as served:
        revoked, held = _pick(demo, "good", "ac-structures"), _pick(demo, "on-hold", "ac-structures")

        def status(entry: dict) -> ocsp.OCSPCertStatus:
            nonce = os.urandom(16)
            body = _post(served.base + "/ocsp", _ocsp_request(demo, entry, nonce=nonce))[2]
            answer = ocsp.load_der_ocsp_response(body)
            assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
            return answer.certificate_status

        for _ in range(3):  # the statuses are now remembered
            assert status(revoked) == ocsp.OCSPCertStatus.GOOD
            assert status(held) == ocsp.OCSPCertStatus.REVOKED
        run_cli("revoke", "--config", str(demo), "--issuer", "ac-structures", "--serial", "0x" + revoked["serial_hex"],
                "--reason", "keyCompromise", check=True)
        run_cli("release-hold", "--config", str(demo), "--issuer", "ac-structures", "--serial",
                "0x" + held["serial_hex"], check=True)
        done = time.monotonic()
        while status(revoked) != ocsp.OCSPCertStatus.REVOKED or status(held) != ocsp.OCSPCertStatus.GOOD:
            assert time.monotonic() - done < 1.0, "status changes not visible in nonce answers within 1 s"
            time.sleep(0.02)


def test_live_slots_say_no_beyond_their_size_and_never_wait() -> None:
    slots = LiveSlots(2)
    assert slots.take() and slots.take()
    assert not slots.take()  # a third live signature: tryLater
    slots.give()
    assert slots.take()
    slots.give()
    slots.give()
    with pytest.raises(ValueError):
        slots.give()


def test_status_cache_charge_is_an_upper_bound() -> None:
    """What one remembered status really takes (key, row as sqlite3 returns it, LRU slot) ≤ what it is charged."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE c (status TEXT, revocation_time INTEGER, reason TEXT)")
    db.executemany("INSERT INTO c VALUES (?, ?, ?)",
                   [("revoked", 1_700_000_000 + i, "cessationOfOperation") for i in range(5000)])
    lru: ByteLru[tuple[str, int], tuple[str, int | None, str | None]] = ByteLru(10**9, STATUS_ENTRY_OVERHEAD)
    issuer = "ac-personnes"
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, row in enumerate(db.execute("SELECT status, revocation_time, reason FROM c")):
            lru.put((issuer, (1 << 159) + i * 7919), row, 0)  # 20-octet serials, the longest
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / 5000
    finally:
        tracemalloc.stop()
    assert per_entry <= STATUS_ENTRY_OVERHEAD, per_entry


def test_a_live_answer_through_aiohttp_given_up_by_the_lane_and_its_timer_is_counted_once() -> None:
    """The event loop held up past the deadline (a signer keeping the GIL, a busy process): the lane's thread
    answers tryLater first (counted expired), and the caller's timer, run in the same turn, finds its task's
    future done already. That is one request given up, counted once (asyncio's loop: the hand-over runs before
    the timers due)."""
    from ocsp.http import OcspComponent

    def answer(request: Request) -> Outcome:
        if request.cert_ids[0].serial == 0:
            time.sleep(0.4)  # holds the only thread past the deadline of the one behind
        return Outcome(b"signed", "successful", "live")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        component = OcspComponent()
        component.live = LiveLane(answer, 1, timeout=0.2)
        component.live.start(loop)
        component.live_timeout = 0.2
        try:
            first = component.live.submit(_request(0))
            behind = asyncio.ensure_future(component._live(b"", _request(1)))
            await asyncio.sleep(0)  # submitted, its timer set
            time.sleep(0.6)  # the loop held up: the thread finds it past its deadline before the timer runs
            assert (await behind).status == "tryLater" and (await first).status == "successful"
            assert component.live.backlog.expired == {"local": 1, "workers": 0}
            assert component.live.backlog.waiting == 0
        finally:
            await loop.run_in_executor(None, component.live.stop)

    asyncio.run(main())
