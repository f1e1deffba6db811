"""The live lane (``ocsp.live``): answers reach their own requester, errors too, with few event-loop wake-ups."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ocsp.live import LiveLane
from ocsp.request import CertId, Request
from ocsp.responder import Outcome


def _request(n: int) -> Request:
    return Request((CertId("sha1", bytes(20), bytes(20), n),), n.to_bytes(4, "big"))


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
