"""``POST /ocsp`` and ``GET /ocsp/{base64}`` in the service, plus the jobs that keep the cache fresh.

Whatever arrives, the answer is an OCSP response (or 405/413 for wrong methods and oversized bodies):
never an HTTP 500, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from aiohttp import web

from directory.hsm.signer import HsmError
from ocsp import response as resp
from ocsp.direct import DirectAnswers
from ocsp.live import LiveLane
from ocsp.lookup import UNCACHED_HEADERS
from ocsp.metrics import OcspMetrics
from ocsp.request import MAX_BODY, Request
from ocsp.responder import PRESIGN_HASH, OcspResponder, Outcome, error_outcome
from ocsp.store import MemoryStore, PresignedStore
from ocsp.visibility import VisibilityLedger

if TYPE_CHECKING:
    from directory.service.app import Service

log = logging.getLogger(__name__)
CHANGE_POLL = 0.2  # seconds between looks at the registry's change log


class OcspComponent:
    """Mounts the responder and runs: change polling, pre-signing, refresh at half validity, persistence."""

    name = "ocsp"

    def __init__(self, clock: Callable[[], float] = time.time,
                 store: Callable[[dict[str, bytes]], PresignedStore] = MemoryStore) -> None:
        self.clock = clock
        self.store = store  # where pre-signed answers live (ocsp/store.py): shared with serving processes or not
        self.responder: OcspResponder | None = None
        self._seq = 0
        self._presign_executor = ThreadPoolExecutor(1, thread_name_prefix="ocsp-presign")
        # registry reads of the update loops: threads of their own, so nothing else (CRL file reads, the
        # page, /metrics) can hold up the OCSP updates, nor they the rest
        self._updates_executor = ThreadPoolExecutor(2, thread_name_prefix="ocsp-updates")
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.live_timeout = 10.0  # seconds a live answer may take to sign: [http] request_timeout (``start``)

    async def start(self, service: Service) -> None:
        self.service = service
        self.responder = OcspResponder(service.config, service.hsm, service.registry, self.clock, self.store)
        self.live_timeout = service.config.http.request_timeout
        # one thread per HSM session; what waits for them is bounded (``ocsp.live.Backlog``) and never signed past
        # request_timeout, whatever asks for it (this process's connections, the serving processes')
        self.live = LiveLane(self.responder.answer_live, service.hsm.sessions, timeout=self.live_timeout)
        self.live.start(asyncio.get_running_loop())
        self.metrics = OcspMetrics(self.responder, self.live.backlog)
        service.metrics.register(self.metrics.collect)
        loop = asyncio.get_running_loop()
        self.visibility = await loop.run_in_executor(None, self._restore_visibility)
        self._seq = self.visibility.cursor
        loaded = await loop.run_in_executor(None, self.responder.load_persisted)
        log.info("OCSP: %d pre-signed responses loaded from the registry", loaded)
        self.mount(service.app.router)
        # the public listener answers held answers itself, before aiohttp (ocsp/direct.py)
        service.connections.direct = DirectAnswers(self, self.clock)
        service.registry.add_listener(self._on_change)
        self._tasks = [asyncio.create_task(self._poll_changes()), asyncio.create_task(self._presign_loop())]
        service.add_job(self._flush, "interval", seconds=2, id="ocsp-flush")

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.responder is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.live.stop)
            await asyncio.get_running_loop().run_in_executor(self._presign_executor, self.responder.flush)
            self.responder.store.close()
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(self._presign_executor, self._save_visibility)
        self._presign_executor.shutdown(wait=True)
        self._updates_executor.shutdown(wait=False, cancel_futures=True)

    # -- queries (the admin API's look-up) -------------------------------------------------------
    def serves(self, issuer: str) -> bool:
        """True when this responder answers for ``issuer``."""
        return self.responder is not None and issuer in self.responder.issuers

    def presigned_window(self, issuer: str, serial_hex: str) -> tuple[int, int] | None:
        """(thisUpdate, nextUpdate) of the answer held for a certificate. A status change drops the held
        answer before anything else: what is held is current, and a request without one is signed live."""
        if self.responder is None:
            return None
        return self.responder.presigned_window(issuer, int(serial_hex, 16))

    # -- HTTP ------------------------------------------------------------------------------------
    def mount(self, router: web.UrlDispatcher) -> None:
        """The OCSP routes (here, and in each serving process of ``[http] workers``)."""
        router.add_post("/ocsp", self._post)
        router.add_post("/ocsp/", self._post)
        router.add_get("/ocsp/{tail:.*}", self._get)
        router.add_get("/ocsp", self._get_empty)

    async def _post(self, request: web.Request) -> web.Response:
        length = request.content_length
        if length is not None and length > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=length)
        # a declared length (checked above) is all the parser delivers; a chunked body is counted as it comes
        body = await request.read() if length is not None else await self._read_limited(request)
        if request.content_type != "application/ocsp-request":
            return self._send(error_outcome(resp.MALFORMED_REQUEST), get=False)
        return self._send(await self._answer(body), get=False)

    async def _get(self, request: web.Request) -> web.Response:
        raw = request.raw_path.split("?", 1)[0]
        # decoded by the responder, and remembered by it only once it parsed to a request it serves
        return self._send(await self._answer(raw[raw.index("/ocsp") + len("/ocsp"):]), get=True)

    async def _get_empty(self, request: web.Request) -> web.Response:
        return self._send(error_outcome(resp.MALFORMED_REQUEST), get=True)

    async def _read_limited(self, request: web.Request) -> bytes:
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(4096):
            size += len(chunk)
            if size > MAX_BODY:
                raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=size)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _answer(self, received: bytes | str) -> Outcome:
        """``received``: a POST body, or the raw GET path after ``/ocsp``."""
        assert self.responder is not None
        started = time.perf_counter()
        try:
            first = self.responder.from_cache(received)
            if isinstance(first, Outcome):
                outcome = first
            else:
                outcome = await self._live(received, first)
        except Exception:  # never a 500: an unexpected failure is an internalError response, logged
            log.exception("OCSP request failed unexpectedly")
            outcome = error_outcome(resp.INTERNAL_ERROR)
        self.responder.stats.count(outcome.status, outcome.path)
        self.metrics.latency.observe(outcome.path, time.perf_counter() - started)
        return outcome

    async def _live(self, received: bytes | str, request: Request) -> Outcome:
        """A request without a held answer: signed here (a serving process hands it to the main process).
        Not signed within ``live_timeout`` (a stuck HSM, a swamped lane): tryLater, as on the direct path
        (``ocsp.direct.Answers``), rather than a handler, its connection and its slot held for good; the
        signature is given up (cancelled: a signing thread not yet at it skips it, its place in the lane's backlog
        given back) and counted as expired. The lane full: tryLater at once (``LiveLane.submit``)."""
        future = self.live.submit(request)
        try:
            async with asyncio.timeout(self.live_timeout):
                return await future
        except TimeoutError:
            if future.done() and not future.cancelled():  # answered in the turn its timer ran (the loop held up):
                return future.result()  # the lane's answer, counted by it if it gave the request up
            self.live.backlog.expired["local"] += 1
            log.warning("OCSP: live answer not signed within %.0f s: tryLater", self.live_timeout)
            return error_outcome(resp.TRY_LATER, "error")

    def live_future(self, received: bytes | str, request: Request) -> asyncio.Future[Outcome]:
        """``_live`` for the direct path (``ocsp.direct``), as a future: here the signing lane's own, no task."""
        return self.live.submit(request)

    def live_expired(self, count: int) -> None:
        """``count`` live answers of this process's own connections given up at their deadline (``ocsp.direct``):
        counted where the signer is. A serving process has none (``WorkerOcsp``): the main process counts the
        same requests given up at the same deadline (source ``workers``)."""
        live: LiveLane | None = getattr(self, "live", None)
        if live is not None:
            live.backlog.expired["local"] += count

    def answer_future(self, received: bytes | str | Request, deadline: float | None = None) -> asyncio.Future[Outcome]:
        """What a serving process asks for a request it holds no answer for (``[http] workers``; usually the
        values of a request it parsed, ``livewire``): the answer, counted by the process that sends it, not
        here. A future, the signing lane's own when it is signed (no task per answer); never an exception."""
        assert self.responder is not None
        try:
            first = self.responder.from_request(received) if isinstance(received, Request) \
                else self.responder.from_cache(received)
        except Exception:
            log.exception("OCSP request failed unexpectedly")
            first = error_outcome(resp.INTERNAL_ERROR)
        if isinstance(first, Request):
            # within the one bound of this process's live work; not signed past its serving process's deadline
            return self.live.submit(first, "workers", deadline)
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        done.set_result(first)
        return done

    def _send(self, outcome: Outcome, get: bool) -> web.Response:
        if get and outcome.next_update is not None and outcome.this_update is not None:
            headers = outcome.get_headers(int(self.clock()))
        else:
            headers = UNCACHED_HEADERS
        return web.Response(body=outcome.body, headers=headers)  # copied into the response's own headers

    # -- freshness ---------------------------------------------------------------------------------
    def _on_change(self, issuer: str, serial_hex: str, what: str) -> None:
        """Registry listener (any thread): drop cached answers now; the poller re-signs."""
        if self.responder is not None and what in ("revoked", "released"):
            self.responder.invalidate(issuer, serial_hex)

    async def _poll_changes(self) -> None:
        """Follow the registry's change log (revocations from any process): invalidate, then re-sign."""
        assert self.responder is not None
        loop = asyncio.get_running_loop()
        registry = self.service.registry
        # PostgreSQL announces commits (LISTEN/NOTIFY): wake at once, look anyway every second;
        # SQLite (one machine) is polled every CHANGE_POLL
        wait = 1.0 if registry.notifies else CHANGE_POLL
        while not self._stopping.is_set():
            token = registry.change_token("changes")
            try:
                changes = await loop.run_in_executor(self._updates_executor, registry.changes_after, self._seq)
                for seq, issuer, serial_hex, changed_at in changes:
                    self.responder.invalidate(issuer, serial_hex)
                    self.visibility.read(seq, issuer, serial_hex, changed_at, issuer in self.responder.issuers)
                    self._seq = seq
                for _, issuer, serial_hex, _ in changes:
                    try:
                        signed = await self.service.hsm.run(self.responder.presign, issuer, serial_hex)
                    except HsmError as exc:
                        log.warning("OCSP re-signing of %s 0x%s deferred: %s", issuer, serial_hex, exc,
                                    extra={"issuer": issuer, "serial": serial_hex})
                        continue
                    if signed:  # the new status is what a cached (RFC 5019) query gets from now on
                        self.visibility.stated(issuer, serial_hex)
                if self.visibility.dirty:
                    await loop.run_in_executor(self._updates_executor, self._save_visibility)
            except Exception:
                log.exception("OCSP change polling failed; retrying")
            if registry.notifies:
                await loop.run_in_executor(self._updates_executor, registry.wait_for, "changes", wait, token)
            else:
                await asyncio.sleep(wait)

    async def _presign_loop(self) -> None:
        """Sign what is missing (start-up, new certificates) and what is past half its validity."""
        assert self.responder is not None
        responder = self.responder
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                for issuer in responder.issuers:
                    missing = await loop.run_in_executor(self._updates_executor, responder.missing, issuer)
                    due = await loop.run_in_executor(self._updates_executor, responder.due_for_refresh, issuer)
                    work = [(s, PRESIGN_HASH) for s in missing] + due
                    for serial_hex, hash_name in work:
                        if self._stopping.is_set():
                            return
                        signed = await loop.run_in_executor(self._presign_executor, responder.presign, issuer,
                                                            serial_hex, hash_name)
                        if signed and hash_name == PRESIGN_HASH:  # a change the poller could not sign shows now
                            self.visibility.stated(issuer, serial_hex)
                    if work:
                        log.info("OCSP: %d responses pre-signed for %s", len(work), issuer)
            except HsmError as exc:
                log.warning("OCSP pre-signing paused: %s", exc)
            except Exception:
                log.exception("OCSP pre-signing failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=30)

    async def _flush(self) -> None:
        assert self.responder is not None
        await asyncio.get_running_loop().run_in_executor(self._presign_executor, self.responder.flush)
        if self.visibility.dirty:
            await asyncio.get_running_loop().run_in_executor(self._presign_executor, self._save_visibility)

    # -- the visibility metric (ocsp/visibility.py) ------------------------------------------------
    def _restore_visibility(self) -> VisibilityLedger:
        registry = self.service.registry
        registry.visibility_epoch(create=True)
        observe = self.service.metrics.visibility.labels("ocsp").observe
        return VisibilityLedger.restore(registry.node_state_get(self._visibility_key), registry.latest_change,
                                        observe, self.clock)

    @property
    def _visibility_key(self) -> str:
        return f"visibility:ocsp@{self.service.config.node}"

    def _save_visibility(self) -> None:
        self.service.registry.node_state_set({self._visibility_key: self.visibility.saved()})

