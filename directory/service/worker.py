"""A serving process of ``[http] workers = N`` (``python -m directory.service.worker``, started by the main
process, ``directory/service/workers.py``).

It listens on the public port beside its siblings (SO_REUSEPORT) and answers OCSP requests whose answer is
held in the shared store (``ocsp.store.LmdbReader``), with the same handlers as the main process
(``ocsp.http.OcspComponent``). Everything else goes to the main process over unix sockets: OCSP requests
without a held answer (nonces, several CertIDs, other hash algorithms, misses) to be signed there, and every
other URL (CRLs, the page, /metrics, /readyz, ...) to the main process's own application. A connection whose
next request needs a live answer is handed to the main process itself, when it takes it
(``directory/service/handover.py``): its live answers then cost no hop each. It never opens the
HSM nor the registry: nothing here is forked from a process that called C_Initialize (it is a new
interpreter), and there is one signer and one writer.

It reports to the main process on stdout, one JSON line a second (``ready`` once listening, then its
cumulative counts) and whenever the main process asks on stdin (a /metrics scrape: the counts are then
exact), so that /metrics sums every process's counts; it stops on SIGTERM, or when its stdin closes (the
main process is gone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from directory import logs
from directory.config import load_config
from directory.service.eventloop import loop_factory
from directory.service.handover import Passer
from directory.service.limits import plan as plan_descriptors
from directory.service.limits import share
from directory.service.listener import HELD_GRACE, ConnectionGate
from directory.service.livewire import LiveClient
from directory.service.sockets import listen
from ocsp import response as resp
from ocsp.direct import DirectAnswers
from ocsp.http import OcspComponent
from ocsp.lookup import AnswerLookup, Outcome, error_outcome, identities
from ocsp.metrics import OcspMetrics
from ocsp.request import Request
from ocsp.responder import OcspStats
from ocsp.store import LmdbReader

log = logging.getLogger(__name__)
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "x-forwarded-for"})
# idle connections to the main process are given up before its own idle timeout can close one being reused
UPSTREAM_KEEPALIVE = 4.0
UPSTREAM_CONNECTIONS = 64  # per serving process: connections held open to the main process's application
REPORT_EVERY = 1.0
CONFIG_CHANGED = 78  # EX_CONFIG


class WorkerLookup(AnswerLookup):
    """``AnswerLookup`` over the shared store, with the counters the OCSP handlers keep."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.stats = OcspStats()


class WorkerOcsp(OcspComponent):
    """The main process's OCSP handlers; what they cannot answer from the store is signed by the main process."""

    def __init__(self, lookup: WorkerLookup, live: LiveClient) -> None:
        super().__init__()
        self.responder = lookup  # type: ignore[assignment]
        self.metrics = OcspMetrics(lookup)  # type: ignore[arg-type]
        self.upstream = live

    async def _live(self, received: bytes | str, request: Request) -> Outcome:
        for attempt in (1, 2):  # once more, on a new connection, when the one it went out on was lost
            try:
                return await self.upstream.ask("request", request)  # its values: not parsed again there
            except ConnectionError as exc:
                if attempt == 2:
                    log.warning("OCSP: the main process could not sign a live answer: %s", exc)
            except TimeoutError as exc:  # not asked again: the signer is busy enough
                log.warning("OCSP: the main process could not sign a live answer: %s", exc)
                break
        return error_outcome(resp.TRY_LATER, "error")

    def live_future(self, received: bytes | str, request: Request) -> asyncio.Future[Outcome]:
        """The direct path's: on the connection to the main process already open, the answer's own future
        (no task; a lost connection or no answer in time is tryLater, ``DirectAnswers.finish``); else ``_live``."""
        asked = self.upstream.submit("request", request)
        return asked if asked is not None else asyncio.ensure_future(self._live(received, request))


def make_proxy(session: aiohttp.ClientSession) -> Handler:
    """Any other URL: the main process's application answers it, streamed back as it comes."""

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if request.remote:
            headers["X-Forwarded-For"] = request.remote
        rid = logs.request_id.get()
        if rid is not None:  # this request's id (app.fronted): the main process logs it and echoes it
            headers["X-Request-ID"] = rid
        body = request.content if request.body_exists else None
        try:
            async with await _upstream(session, request.method, request.raw_path, headers, body) as up:
                answer = web.StreamResponse(status=up.status, reason=up.reason)
                for raw_name, raw_value in up.raw_headers:  # as the main process spelled them
                    name = raw_name.decode("latin-1")
                    if name.lower() not in HOP_BY_HOP:
                        answer.headers.add(name, raw_value.decode("latin-1"))
                await answer.prepare(request)
                async for chunk in up.content.iter_chunked(64 * 1024):
                    await answer.write(chunk)
                await answer.write_eof()
                return answer
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("the main process did not answer %s %s: %s", request.method, request.path, exc)
            return web.Response(status=503, headers={"Retry-After": "1"}, text="main process unavailable\n")

    return proxy


async def _upstream(session: aiohttp.ClientSession, method: str, path: str, headers: dict[str, str],
                    body: object) -> aiohttp.ClientResponse:
    """The main process's response; a request without a body is sent again once when the kept-alive
    connection it went out on had just been closed."""
    for attempt in (1, 2):
        try:
            return await session.request(method, "http://annuaire" + path, headers=headers, data=body,
                                         allow_redirects=False, auto_decompress=False)
        except aiohttp.ServerDisconnectedError:
            if attempt == 2 or body is not None:
                raise
    raise AssertionError("unreachable")


class Reporter:
    """Cumulative counts for the main process: OCSP answers, latency buckets, the listener's connections."""

    def __init__(self, ocsp: WorkerOcsp, gate: ConnectionGate) -> None:
        self.ocsp, self.gate = ocsp, gate

    def line(self, ack: int = 0) -> str:
        stats = self.ocsp.responder.stats  # type: ignore[union-attr]
        latency = self.ocsp.metrics.latency.cumulative()  # type: ignore[union-attr]
        gate = self.gate
        return json.dumps({"ack": ack, "by_status": stats.by_status, "by_path": stats.by_path, "latency": latency,
                           "open": gate.open, "refused": gate.refused, "timed_out": gate.timed_out,
                           "stalled": gate.stalled, "handed_over": gate.handed_over,
                           "handover_unanswered": gate.handover_unanswered})


async def run(args: argparse.Namespace) -> None:
    from directory.service.app import fronted  # the same request handling as the main process's

    if hashlib.sha256(Path(args.config).read_bytes()).hexdigest() != args.config_sha256:
        log.error("serving process %d: %s changed since `annuaire serve` started: not serving it beside the "
                  "main process's; restart the service to apply it", args.index, args.config)
        raise SystemExit(CONFIG_CHANGED)
    config = load_config(args.config)
    http = config.http
    budget = plan_descriptors(share(http.max_connections, args.workers), None)
    sockets = Path(args.sockets)
    idents = {i.name: i for i in identities(config)}
    store = LmdbReader(Path(args.store), {name: i.certs for name, i in idents.items()})
    lookup = WorkerLookup(idents, store, http.ocsp_request_cache)
    timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_read=120)
    app_session = aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(str(sockets / "app.sock"), limit=UPSTREAM_CONNECTIONS,
                                        keepalive_timeout=UPSTREAM_KEEPALIVE), timeout=timeout,
        auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"))
    live = LiveClient(str(sockets / "live.sock"), http.request_timeout)  # then tryLater, as in the main process
    ocsp = WorkerOcsp(lookup, live)
    app = web.Application(client_max_size=64 * 1024)  # no middlewares: see app.fronted
    ocsp.mount(app.router)
    app.router.add_route("*", "/{tail:.*}", make_proxy(app_session), name="proxy")
    # a connection about to need a live answer goes to the main process itself (``handover``), not each answer
    handover = Passer(str(sockets / "handover.sock"), http.request_timeout)
    gate = ConnectionGate(budget.public_cap, http.request_timeout, idle_timeout=http.idle_timeout,
                          direct=DirectAnswers(ocsp), handover=handover)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=http.idle_timeout)
    await runner.setup()
    assert runner.server is not None
    runner.server.request_handler = fronted(runner.server.request_handler)  # type: ignore[arg-type]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl-C in a terminal reaches the whole process group: the main process stops this one (SIGTERM), in order
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    listener = await listen(runner, http.host, http.port, gate, reuse_port=True)
    reporter = Reporter(ocsp, gate)

    def asked() -> None:
        """stdin: ``<n>\n`` asks for a report now (a /metrics scrape), acknowledging n; EOF: the main process
        is gone."""
        data = os.read(sys.stdin.fileno(), 512)
        if not data:
            stop.set()
            return
        tokens = data.split()
        print(reporter.line(int(tokens[-1]) if tokens and tokens[-1].isdigit() else 0), flush=True)

    loop.add_reader(sys.stdin.fileno(), asked)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    log.debug("serving process %d listening on %s:%d", args.index, http.host, http.port)
    try:
        while not stop.is_set():
            print(reporter.line(), flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPORT_EVERY)
    finally:
        listener.close()
        gate.close_held()
        await gate.wait_held(HELD_GRACE)
        await runner.cleanup()
        print(reporter.line(), flush=True)
        await app_session.close()
        live.close()
        handover.close()
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="annuaire-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--sockets", required=True, help="the main process's private socket directory")
    parser.add_argument("--store", required=True, help="the shared answers (LMDB file)")
    parser.add_argument("--config-sha256", required=True, help="the configuration the main process runs with")
    parser.add_argument("--event-loop", default="asyncio", help="[http] event_loop (no TLS listener here)")
    args = parser.parse_args(argv)
    logs.setup(os.environ.get("ANNUAIRE_LOG_LEVEL", "INFO"), os.environ.get("ANNUAIRE_LOG_FORMAT"))
    started = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=loop_factory(args.event_loop)[1]) as runner:
            runner.run(run(args))
    except BrokenPipeError:  # the main process is gone: nothing to report to
        return 0
    log.debug("serving process %d stopped after %.0f s", args.index, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
