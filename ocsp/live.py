"""Live (signed on demand) OCSP answers handed to signing threads and back with as few wake-ups as possible.

Every nonce answer costs one HSM signature; what surrounds it must cost little next to it. The generic
path (``loop.run_in_executor``) pays per answer a ``concurrent.futures.Future`` chained to an asyncio one
and a write to the event loop's self-pipe. Here the event loop puts ``(request, future)`` on a C queue;
one thread per HSM session takes them in turn (no wake-up while the queue is not empty) and appends what
it answered to a list; the loop is woken once for all the answers that piled up meanwhile (under load,
one wake-up serves several answers). A request whose future was cancelled before a thread took it is
skipped: the queue is not bounded by the slots (taken by the threads), and requests given up (a client gone,
``ocsp.direct``'s request deadline) would otherwise each still cost a signature, ahead of the living ones.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable

from ocsp.request import Request
from ocsp.responder import Outcome

_STOP = None


class LiveLane:
    """``threads`` signing threads running ``answer`` (blocking, HSM) for requests from one event loop."""

    def __init__(self, answer: Callable[[Request], Outcome], threads: int) -> None:
        self._answer = answer
        self._jobs: queue.SimpleQueue[tuple[Request, asyncio.Future[Outcome]] | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[asyncio.Future[Outcome], Outcome | None, BaseException | None]] = \
            collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self.wakeups = 0  # times the event loop was woken to take answers (fewer than answers under load)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads = [threading.Thread(target=self._work, name=f"ocsp-live_{i}", daemon=True)
                         for i in range(threads)]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for thread in self._threads:
            thread.start()

    async def answer(self, request: Request) -> Outcome:
        """The live answer to ``request`` (signed on a signing thread)."""
        return await self.submit(request)

    def submit(self, request: Request) -> asyncio.Future[Outcome]:
        """The future of the live answer to ``request``: what ``answer`` awaits, for a caller that needs no
        coroutine (``ocsp.direct`` chains a callback to it: no task per answer). Cancelling it forgets the
        answer, and the signature unless a signing thread has begun it."""
        assert self._loop is not None, "LiveLane.start() first"
        future: asyncio.Future[Outcome] = self._loop.create_future()
        self._jobs.put((request, future))
        return future

    def stop(self) -> None:
        """Let the threads finish what they hold and end (waits for them)."""
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=60)

    def _work(self) -> None:
        jobs, done, answer = self._jobs, self._done, self._answer
        while True:
            job = jobs.get()
            if job is _STOP:
                return
            request, future = job
            if future.cancelled():  # given up (client gone, request deadline past): no signature for nobody
                continue
            try:
                done.append((future, answer(request), None))
            except BaseException as exc:  # handed to the awaiting coroutine, which decides
                done.append((future, None, exc))
            with self._lock:
                if self._wake_pending:
                    continue  # the loop has yet to drain: it will find this answer too
                self._wake_pending = True
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed (shutting down): nobody waits any more
                return

    def _drain(self) -> None:
        """On the event loop: hand every answer ready so far to its coroutine."""
        with self._lock:
            self._wake_pending = False  # before popping: an answer appended from now on schedules a new drain
        self.wakeups += 1
        done = self._done
        while done:
            future, outcome, exc = done.popleft()
            if future.cancelled():
                continue
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(outcome)  # type: ignore[arg-type]
