"""``[http] workers = N`` (N > 1): the main process's side of the serving processes.

The main process keeps everything scheduled and everything that writes: the HSM session, the registry, CRL
builds, OCSP pre-signing and change following, the LDAP sync, the admin listener, the publication checker.
It no longer listens on the public port: N serving processes (``directory/service/worker.py``) do, side by
side (SO_REUSEPORT), and answer pre-signed OCSP requests from the store the pre-signer writes
(``ocsp.store.LmdbStore``: one memory-mapped file, not a copy per process). What they cannot answer comes
back here over two unix sockets in a private directory: ``live.sock`` (OCSP requests to sign: nonces,
misses; framed by ``directory/service/livewire.py``, answered by ``OcspComponent.answer_future``) and
``app.sock`` (the service's own application: CRLs, the page, /metrics, /readyz...). A client connection
about to need a live answer comes itself, over ``handover.sock`` (``directory/service/handover.py``): this
process then serves it (``adopted``, its own gate and cap), and its live answers no longer cross ``live.sock``.

Serving processes are new interpreters (``python -m``), never forks of this one: PKCS#11 is not safe across
fork after C_Initialize. One that exits or falls silent (no report for ``SILENCE`` seconds: a stuck event
loop) is restarted, logged and counted (``annuaire_http_worker_restarts``); /readyz fails while none is
listening (nothing answers the public port then) and, once all have listened, warns while some are
missing. Their counts (OCSP answers, latency buckets, connections) arrive once a second, and at each
/metrics scrape, and are summed into this process's metric families.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

import directory
from directory.config import Config
from directory.service.handover import Adopter
from directory.service.limits import INTERNAL_CAP_PER_WORKER, share
from directory.service.listener import HELD_GRACE, ConnectionGate, _Gated
from directory.service.livewire import LiveServer
from ocsp import response as resp
from ocsp.http import OcspComponent
from ocsp.lookup import Outcome, error_outcome
from ocsp.request import Request
from ocsp.store import LmdbStore

if TYPE_CHECKING:
    from directory.service.app import Component, Service

log = logging.getLogger(__name__)
SILENCE = 15.0  # seconds without a report before a serving process is taken as stuck and killed
SILENCE_GRACE = 1.0  # and then this long more, the pipe looked at again (the main process may be the one held up)
STOP_GRACE = 10.0  # seconds a serving process has to finish its requests on shutdown


def store_path(config: Config) -> Path:
    return config.data_dir / "ocsp-answers.lmdb"


def with_workers(config: Config, components: list[Component]) -> list[Component]:
    """The components of a service with serving processes: OCSP answers kept in the shared store, and the
    pool last (started once every part is up, stopped first)."""
    for component in components:
        if isinstance(component, OcspComponent):
            component.store = functools.partial(LmdbStore, store_path(config))
    return [*components, WorkerPool(config.http.workers)]


@dataclass
class Slot:
    index: int
    process: asyncio.subprocess.Process | None = None
    serving: bool = False
    counts: dict[str, Any] = field(default_factory=dict)  # the latest cumulative report
    acked: int = 0  # the last report request it answered
    reported: asyncio.Event = field(default_factory=asyncio.Event)


class WorkerPool:
    """Starts, follows and restarts the serving processes; answers their live OCSP requests."""

    name = "workers"

    def __init__(self, workers: int) -> None:
        self.slots = [Slot(i) for i in range(workers)]
        self.restarts = 0
        self.started_all = False
        self.retired: dict[str, Any] = {}  # counts of serving processes that exited
        self._stopping = False
        self._asked = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.sockets: Path | None = None
        self._live_server: asyncio.AbstractServer | None = None
        self.adopted: ConnectionGate | None = None  # client connections handed over by the serving processes
        self.adopter: Adopter | None = None

    @property
    def app_socket(self) -> str:
        assert self.sockets is not None
        return str(self.sockets / "app.sock")

    async def start(self, service: Service) -> None:
        self.service = service
        self.ocsp = service.find(OcspComponent)
        # a serving process (re)started later checks it reads the configuration this process runs with
        self.config_digest = hashlib.sha256(Path(service.config.path).read_bytes()).hexdigest()
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
        self.sockets = Path(tempfile.mkdtemp(prefix="annuaire-", dir=runtime))  # 0700: this user only
        n = len(self.slots)
        # app.sock's gate (live.sock: one framed connection per serving process, livewire)
        self.internal = ConnectionGate(n * INTERNAL_CAP_PER_WORKER, service.config.http.request_timeout,
                                       name="internal", cut_stalled_readers=False)
        # what they ask to sign: given up when they give it up (``LiveClient``: request_timeout), and within the
        # signing lane's one bound, with this process's own live requests (``ocsp.live.Backlog``)
        backlog = self.ocsp.live.backlog if self.ocsp is not None and hasattr(self.ocsp, "live") else None
        timeout = service.config.http.request_timeout
        self._live_server = await asyncio.get_running_loop().create_unix_server(
            lambda: LiveServer(self._live, backlog, timeout), str(self.sockets / "live.sock"))
        # connections handed over: this process's share of max_connections, as each serving process has its own
        # (what they hand over frees their slot: the total open on the public port stays within max_connections)
        http = service.config.http
        budget = service.descriptors
        cap = share(http.max_connections, n)
        self.adopted = ConnectionGate(min(budget.public_cap, cap) if budget is not None else cap,
                                      http.request_timeout, idle_timeout=http.idle_timeout,
                                      direct=service.connections.direct)
        service.readiness_checks["workers"] = self._problem
        service.readiness_warnings["workers"] = self._warning
        if self.ocsp is not None and getattr(self.ocsp, "metrics", None) is not None:
            self.ocsp.metrics.elsewhere = self.ocsp_counts
        service.metrics.register(self.collect)

    async def launch(self, server: Callable[[], asyncio.Protocol]) -> None:
        """Start the serving processes (the main process's application listens on ``app_socket`` by now);
        ``server``: the application's protocol factory, for the connections handed over that leave the direct
        path (``runner.server``)."""
        assert self.sockets is not None and self.adopted is not None
        if self.adopted.direct is not None:  # without OCSP nothing is handed over
            self.adopter = Adopter(str(self.sockets / "handover.sock"), self.adopted, functools.partial(
                self._adopt, server), timeout=self.adopted.request_timeout)  # the serving processes' (``Passer``)
            self.adopter.start()
        self._tasks = [asyncio.create_task(self._keep(slot), name=f"worker-{slot.index}") for slot in self.slots]

    def _adopt(self, server: Callable[[], asyncio.Protocol], sock: socket.socket,
               carried: bytes) -> asyncio.Future[object]:
        """A connection a serving process handed over, served here from ``carried`` on (fed to its gate before
        anything read here: ``_Gated.connection_made``)."""
        assert self.adopted is not None
        gate = self.adopted

        def protocol() -> _Gated:
            inner = server()
            # the runner keeps its connections (the serving processes') idle for 60 s at least (run_service): a
            # client's, once aiohttp's here, is closed after idle_timeout as a serving process would close it
            if hasattr(inner, "_keepalive_timeout"):  # aiohttp's RequestHandler (no public setter)
                inner._keepalive_timeout = gate.idle_timeout
            return _Gated(inner, gate, carried)

        async def adopt() -> object:
            try:
                return await asyncio.get_running_loop().connect_accepted_socket(protocol, sock)
            except BaseException:
                sock.close()
                raise

        return asyncio.ensure_future(adopt())

    async def stop(self) -> None:
        await self.stop_workers()
        if self._live_server is not None:
            self._live_server.close()
        if self.sockets is not None:
            shutil.rmtree(self.sockets, ignore_errors=True)

    async def stop_workers(self) -> None:
        """SIGTERM to each serving process, SIGKILL to any still there after ``STOP_GRACE``."""
        if self._stopping:
            return
        self._stopping = True
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.terminate()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=STOP_GRACE)
            for slot in self.slots:
                if slot.process is not None and slot.process.returncode is None:
                    log.warning("serving process %d did not stop within %.0f s: killed", slot.index, STOP_GRACE)
                    with contextlib.suppress(ProcessLookupError):
                        slot.process.kill()
            if late:
                await asyncio.wait(late, timeout=5)
        if self.adopter is not None:  # no serving process left to hand any over
            self.adopter.close()
        if self.adopted is not None:  # as the public listener's own at shutdown (``run_service``)
            self.adopted.close_held()
            await self.adopted.wait_held(HELD_GRACE)

    # -- following one serving process -------------------------------------------------------------
    async def _keep(self, slot: Slot) -> None:
        backoff = 0.5
        while not self._stopping:
            began = time.monotonic()
            try:
                slot.process = await self._spawn(slot.index)
            except OSError as exc:
                log.error("serving process %d could not start: %s", slot.index, exc)
            else:
                await self._follow(slot, slot.process)
                code = await slot.process.wait()
                slot.serving = False
                self._retire(slot)
                if self._stopping:
                    break
                self.restarts += 1
                log.error("serving process %d (pid %d) exited with code %s: restarted", slot.index,
                          slot.process.pid, code, extra={"worker": slot.index, "exit_code": code})
                store = getattr(getattr(self.ocsp, "responder", None), "store", None)
                if isinstance(store, LmdbStore):
                    store.reclaim_readers()  # a reader slot it held must not pin old pages
            if time.monotonic() - began > 60:
                backoff = 0.5
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        config = self.service.config
        source = str(Path(directory.__file__).resolve().parent.parent)  # a source checkout runs as installed
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": source + (os.pathsep + path if path else ""),
               "ANNUAIRE_LOG_LEVEL": logging.getLevelName(logging.getLogger().level)}
        assert self.sockets is not None
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "directory.service.worker", "--config", str(config.path), "--index", str(index),
            "--workers", str(len(self.slots)), "--sockets", str(self.sockets), "--store", str(store_path(config)),
            "--config-sha256", self.config_digest, "--event-loop", config.http.event_loop,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env)

    async def _follow(self, slot: Slot, process: asyncio.subprocess.Process) -> None:
        """Read its reports until it exits; kill it when it falls silent."""
        assert process.stdout is not None
        while True:
            try:
                try:
                    line = await asyncio.wait_for(process.stdout.readline(), SILENCE)
                except TimeoutError:
                    if self._stopping:
                        continue
                    # the silence may be this process's (stopped, swapped out, its loop held up): what the serving
                    # process wrote meanwhile waits in the pipe, read at once; its timer may fire before the pipe
                    # is looked at, so a stall of this process longer than SILENCE killed every serving process
                    line = await asyncio.wait_for(process.stdout.readline(), SILENCE_GRACE)
            except TimeoutError:
                log.error("serving process %d (pid %d) silent for %.0f s: killed", slot.index, process.pid,
                          SILENCE + SILENCE_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                continue
            except ValueError:  # a line past the stream's limit: not one of ours
                continue
            if not line:
                return
            try:
                report = json.loads(line)
            except ValueError:
                continue
            if report.get("ready"):
                slot.serving = True
                if not self.started_all and all(s.serving for s in self.slots):
                    self.started_all = True
                    log.info("%d serving processes listening", len(self.slots))
            else:
                slot.counts = report
                slot.acked = max(slot.acked, int(report.get("ack", 0)))
                slot.reported.set()
                self._update_gate()

    def _retire(self, slot: Slot) -> None:
        """Keep a finished process's counts: counters only go up."""
        self.retired = _add(self.retired, slot.counts)
        slot.counts = {}
        self._update_gate()

    def _update_gate(self) -> None:
        """The public listener's counters in /metrics: the serving processes' sums."""
        totals = self.totals()
        gate = self.service.connections
        gate.open = int(sum(s.counts.get("open", 0) for s in self.slots))
        gate.refused, gate.timed_out = int(totals.get("refused", 0)), int(totals.get("timed_out", 0))
        gate.stalled = int(totals.get("stalled", 0))
        adopted = self.adopted
        if adopted is not None:  # this process's share: connections handed over
            gate.open += adopted.open
            gate.timed_out += adopted.timed_out
            gate.stalled += adopted.stalled

    async def refresh(self, timeout: float = 1.0) -> None:
        """Ask every serving process for its counts now and wait for them (a /metrics scrape tells what
        was answered up to the scrape, not up to the last periodic report)."""
        self._asked += 1
        asked, waiting = self._asked, []
        for slot in self.slots:
            process = slot.process
            if not slot.serving or process is None or process.stdin is None or process.returncode is not None:
                continue
            with contextlib.suppress(OSError, RuntimeError):
                process.stdin.write(b"%d\n" % asked)
                waiting.append(slot)

        async def answered(slot: Slot) -> None:
            while slot.acked < asked:
                slot.reported.clear()
                await slot.reported.wait()

        if waiting:
            _, late = await asyncio.wait([asyncio.create_task(answered(s)) for s in waiting], timeout=timeout)
            for task in late:
                task.cancel()

    # -- what the main process answers for them ----------------------------------------------------
    def _live(self, received: bytes | str | Request, deadline: float | None = None) -> asyncio.Future[Outcome]:
        """A serving process's request to sign (``livewire``), given up at ``deadline`` (``time.monotonic()``)."""
        if self.ocsp is None or self.ocsp.responder is None:
            busy: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            busy.set_result(error_outcome(resp.TRY_LATER, "error"))
            return busy
        return self.ocsp.answer_future(received, deadline)

    # -- readiness and metrics -------------------------------------------------------------------------
    def serving(self) -> int:
        return sum(s.serving for s in self.slots)

    async def _problem(self) -> str | None:
        n, total = self.serving(), len(self.slots)
        return f"none of the {total} serving processes is listening" if n == 0 else None

    async def _warning(self) -> str | None:
        n, total = self.serving(), len(self.slots)
        return f"{n} of {total} serving processes listening (the others are restarting)" \
            if self.started_all and 0 < n < total else None

    def totals(self) -> dict[str, Any]:
        total = self.retired
        for slot in self.slots:
            total = _add(total, slot.counts)
        return total

    def ocsp_counts(self) -> dict[str, Any]:
        return self.totals()

    def collect(self) -> Iterator[Metric]:
        serving = GaugeMetricFamily("annuaire_http_workers", "Serving processes ([http] workers), by state",
                                    labels=["state"])
        n = self.serving()
        serving.add_metric(["serving"], n)
        serving.add_metric(["down"], len(self.slots) - n)
        restarts = CounterMetricFamily("annuaire_http_worker_restarts", "Serving processes restarted after they "
                                       "exited or fell silent")
        restarts.add_metric([], self.restarts)
        handed = CounterMetricFamily("annuaire_http_connections_handed_over", "Client connections a serving process "
                                     "handed to the main process for their live OCSP answers")
        totals = self.totals()  # (every serving process's reports summed: once per scrape)
        handed.add_metric([], int(totals.get("handed_over", 0)))
        refused = CounterMetricFamily("annuaire_http_connections_handover_refused", "Client connections the main "
                                      "process did not take from a serving process (its cap reached): answered "
                                      "there, over livewire")
        refused.add_metric([], self.adopter.refused if self.adopter is not None else 0)
        unanswered = CounterMetricFamily("annuaire_http_connections_handover_unanswered", "Client connections a "
                                         "serving process offered to the main process and closed without its "
                                         "answer (none within request_timeout, or handover.sock lost)")
        unanswered.add_metric([], int(totals.get("handover_unanswered", 0)))
        late = CounterMetricFamily("annuaire_http_connections_handover_late", "Client connections the main process "
                                   "read too late to hand back to their serving process (it gives them up after "
                                   "request_timeout): answered 503 by the main process")
        late.add_metric([], self.adopter.late if self.adopter is not None else 0)
        yield from (serving, restarts, handed, refused, unanswered, late)


def _add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Sum two reports (nested dictionaries of numbers)."""
    out: dict[str, Any] = dict(a)
    for key, value in b.items():
        if isinstance(value, dict):
            out[key] = _add(out.get(key, {}), value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = out.get(key, 0) + value
    return out
