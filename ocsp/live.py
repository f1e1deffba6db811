"""Live (signed on demand) OCSP answers handed to signing threads and back with as few wake-ups as possible.

Every nonce answer costs one HSM signature; what surrounds it must cost little next to it. The generic
path (``loop.run_in_executor``) pays per answer a ``concurrent.futures.Future`` chained to an asyncio one
and a write to the event loop's self-pipe. Here the event loop puts ``(request, future)`` on a C queue;
one thread per HSM session takes them in turn (no wake-up while the queue is not empty) and appends what
it answered to a list; the loop is woken once for all the answers that piled up meanwhile (under load,
one wake-up serves several answers). A request whose future was cancelled before a thread took it is
skipped: the queue is not bounded by the slots (taken by the threads), and requests given up (a client gone,
``ocsp.direct``'s request deadline) would otherwise each still cost a signature, ahead of the living ones.

The lane is the one bound on live work in a process (``Backlog``): at most ``cap`` requests wait for (or are at)
the signer, whatever asked for them (this process's own connections, ``local``; the serving processes' over
``directory/service/livewire.py``, ``workers``). Past it, ``submit`` answers tryLater at once (path ``shed``),
no queue: a flood of nonces from any side cannot make the ones behind wait longer than ``cap`` signatures.
A request leaves the count as its future is done, however (signed, failed, cancelled): a place is never kept by
a request given up, and a cancelled one still in the queue costs no signature. What cancelled requests leave
in the queue is swept out once they outnumber ``cap`` (``_purge``), so cancelling cannot grow it either.

Whoever asks keeps a deadline (``request_timeout``) and cancels at it; the lane has one too (``timeout`` after
``submit``, or the asker's own when earlier: a serving process's, ``timeout`` after it sent): a thread takes no
request past it, answering tryLater instead. The callers' timers run on the event loop, which a signer that
keeps the GIL (SoftHSM2, ``directory.hsm.module``) or a busy process can hold up: without it a thread would
sign what waited past its deadline before the loop got to cancel it.
"""

from __future__ import annotations

import asyncio
import collections
import math
import queue
import threading
from collections.abc import Callable
from time import monotonic

from ocsp import response as resp
from ocsp.request import Request
from ocsp.responder import Outcome, error_outcome

_STOP = None
MAX_WAITING = 1024  # live requests of a process (every source) waiting for the signer: past it, tryLater
SOURCES = ("local", "workers")  # this process's connections; the serving processes' (livewire)


class Backlog:
    """What waits for the signer of a process (``waiting``, at most ``cap``), and what was turned away or given up,
    by source (``/metrics``). Counted on the event loop only."""

    __slots__ = ("cap", "expired", "full", "waiting")

    def __init__(self, cap: int = MAX_WAITING) -> None:
        self.cap = cap
        self.waiting = 0
        # given up at their deadline (tryLater; not signed unless a signing thread had begun): counted by whoever
        # gives it up first (``ocsp.direct``, ``ocsp.http``, ``livewire``, or the lane's thread)
        self.expired = dict.fromkeys(SOURCES, 0)
        self.full = dict.fromkeys(SOURCES, 0)  # answered tryLater at once, ``cap`` waiting already


class LiveLane:
    """``threads`` signing threads running ``answer`` (blocking, HSM) for requests from one event loop."""

    def __init__(self, answer: Callable[[Request], Outcome], threads: int, cap: int = MAX_WAITING,
                 timeout: float = math.inf) -> None:
        self._answer = answer
        self.backlog = Backlog(cap)
        self.timeout = timeout  # seconds after ``submit`` a thread no longer takes a request up
        self._ghosts = 0  # requests cancelled since the last purge (some still in the queue, to be skipped)
        self._stopped = False
        # (request, its future, deadline: time.monotonic(), source)
        self._jobs: queue.SimpleQueue[tuple[Request, asyncio.Future[Outcome], float, str] | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[asyncio.Future[Outcome], Outcome | None, BaseException | None]] = \
            collections.deque()
        self._late: collections.deque[tuple[asyncio.Future[Outcome], str]] = collections.deque()  # not taken up
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

    def submit(self, request: Request, source: str = "local", deadline: float | None = None) -> asyncio.Future[Outcome]:
        """The future of the live answer to ``request``: what ``answer`` awaits, for a caller that needs no
        coroutine (``ocsp.direct`` chains a callback to it: no task per answer). Cancelling it forgets the
        answer, and the signature unless a signing thread has begun it, and gives its place back. With ``cap``
        requests waiting already, a future done at once: tryLater (path ``shed``), counted for ``source``.
        ``deadline`` (``time.monotonic()``): its asker's own when earlier than ``timeout`` from now (a serving
        process's request, given up ``timeout`` after it was sent, however late it was read)."""
        assert self._loop is not None, "LiveLane.start() first"
        future: asyncio.Future[Outcome] = self._loop.create_future()
        backlog = self.backlog
        if backlog.waiting >= backlog.cap or self._stopped:
            if not self._stopped:
                backlog.full[source] += 1
            future.set_result(error_outcome(resp.TRY_LATER, "shed" if not self._stopped else "error"))
            return future
        backlog.waiting += 1
        future.add_done_callback(self._release)  # first of its callbacks: the place is free before they run
        until = monotonic() + self.timeout
        self._jobs.put((request, future, until if deadline is None else min(deadline, until), source))
        return future

    def _release(self, future: asyncio.Future[Outcome]) -> None:
        self.backlog.waiting -= 1
        if future.cancelled():
            self._ghosts += 1
            if self._ghosts > self.backlog.cap:
                self._purge()

    def _purge(self) -> None:
        """Take the cancelled requests out of the queue (the others go back in their order). Without it a
        stalled signer and clients that give up and ask again (a place each time) would grow the queue without
        end; with it, it holds at most about twice ``cap``. Runs once per ``cap`` cancellations."""
        self._ghosts = 0
        jobs, kept = self._jobs, []
        while True:
            try:
                job = jobs.get_nowait()
            except queue.Empty:
                break
            if job is _STOP or not job[1].cancelled():
                kept.append(job)
        for job in kept:
            jobs.put(job)

    def stop(self) -> None:
        """Let the threads finish what they hold and end (waits for them); what is asked from now on is tryLater
        (no thread would take it: it would wait for good, its place kept)."""
        self._stopped = True
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=60)

    def _work(self) -> None:
        jobs, done, late, answer = self._jobs, self._done, self._late, self._answer
        while True:
            job = jobs.get()
            if job is _STOP:
                return
            request, future, deadline, source = job
            if future.cancelled():  # given up (client gone, request deadline past): no signature for nobody
                continue
            if monotonic() > deadline:  # its caller's timer has yet to run (the loop held up): not signed
                late.append((future, source))
            else:
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
        late = self._late
        while late:
            future, source = late.popleft()
            if not future.cancelled():  # else its caller gave it up first, and counted it
                self.backlog.expired[source] += 1
                future.set_result(error_outcome(resp.TRY_LATER, "error"))
