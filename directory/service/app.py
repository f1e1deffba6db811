"""``annuaire serve``: one asyncio process, an aiohttp application and an apscheduler scheduler.

The parts (CRL publication, OCSP, LDAP sync, the page, the admin API, the publication checker) are
``Component``s: each gets the ``Service`` at start-up to add its routes, jobs, readiness checks and metric
families, and is stopped in reverse order on shutdown. A part that needs another asks for it by type
(``Service.find``) and uses its typed queries, never its internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CONTENT_TYPE_LATEST

from directory import logs
from directory.config import Config, ConfigError
from directory.hsm.signer import HsmError, HsmSigner, HsmUnavailable, KeyUnusable
from directory.ops.metrics import Metrics, exposition
from directory.registry import Registry, RegistryError
from directory.runtime import inspect_hsm, open_config_registry, open_hsm
from directory.service.eventloop import EventLoopUnavailable, loop_factory
from directory.service.limits import Budget, DescriptorBudgetError, internal, share
from directory.service.limits import plan as plan_descriptors
from directory.service.listener import HELD_GRACE, ConnectionGate, request_deadline
from directory.service.sockets import listen, listen_unix, port_free
from directory.service.systemd import Notifications
from directory.service.workers import WorkerPool, with_workers

log = logging.getLogger(__name__)


class Component(Protocol):
    name: str

    async def start(self, service: Service) -> None: ...

    async def stop(self) -> None: ...


ReadinessCheck = Callable[[], Awaitable[str | None]]
C = TypeVar("C")


@dataclass
class Service:
    config: Config
    hsm: HsmSigner
    registry: Registry
    app: web.Application
    scheduler: AsyncIOScheduler
    connections: ConnectionGate  # the public listener's gate
    components: list[Component] = field(default_factory=list)
    readiness_checks: dict[str, ReadinessCheck] = field(default_factory=dict)
    # reasons /readyz names without failing (a part configured not to take the node out of rotation: LDAP
    # refusals with refusals_fail_readiness = false, the publication checker without fail_readiness)
    readiness_warnings: dict[str, ReadinessCheck] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    admin_connections: ConnectionGate | None = None  # the admin listener's gate, when it runs
    descriptors: Budget | None = None

    def find(self, kind: type[C]) -> C | None:
        """This service's component of type ``kind``, or None when it runs without one."""
        return next((c for c in self.components if isinstance(c, kind)), None)

    def add_job(self, func: Callable[..., Awaitable[object]], trigger: str, **kwargs: object) -> None:
        """Schedule a coroutine job; a shutdown that cancels it mid-run is a normal end, not an error."""

        @functools.wraps(func)
        async def job(*args: object, **kw: object) -> None:
            try:
                await func(*args, **kw)
            except asyncio.CancelledError:
                log.debug("job %s stopped by shutdown", getattr(func, "__name__", func))

        self.scheduler.add_job(job, trigger, coalesce=True, max_instances=1, **kwargs)

    async def readiness(self) -> dict[str, str]:
        """Problems by part; empty when ready."""
        problems: dict[str, str] = {}
        labels = [i.key_label for i in self.config.issuers if i.key_label is not None]
        try:
            await self.hsm.run(self.hsm.check, labels)
        except HsmError as exc:
            problems["hsm"] = str(exc)
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.registry.ping)
        except RegistryError as exc:
            problems["registry"] = str(exc)
        problems.update(await _reasons(self.readiness_checks))
        return problems

    async def warnings(self) -> dict[str, str]:
        """Reasons named by /readyz that do not make it fail."""
        return await _reasons(self.readiness_warnings)


async def _reasons(checks: dict[str, ReadinessCheck]) -> dict[str, str]:
    problems: dict[str, str] = {}
    for name, check in checks.items():
        try:
            problem = await check()
        except Exception as exc:  # a failing check is a reason, not a crash
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            problems[name] = problem
    return problems


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request gets an id (the caller's ``X-Request-ID`` when sane), in its log lines and its answer."""
    rid = logs.take_request_id(request.headers.get("X-Request-ID", ""))
    token = logs.request_id.set(rid)
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers["X-Request-ID"] = rid
            raise
        response.headers["X-Request-ID"] = rid
        return response
    finally:
        logs.request_id.reset(token)


RequestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def fronted(handle: RequestHandler) -> RequestHandler:
    """The public listener's request handler: ``request_deadline`` and ``request_ids`` around the application's
    own (``Server.request_handler``), called as functions rather than registered as middlewares: any middleware
    makes aiohttp wrap every handler in layers of its own (measured: ~8 µs of a ~60 µs answer,
    bench/ocsp_answer.py). Routing errors (404, 405) pass through here too."""

    async def identified(request: web.Request) -> web.StreamResponse:
        return await request_ids(request, handle)

    async def serve_request(request: web.Request) -> web.StreamResponse:
        return await request_deadline(request, identified)

    return serve_request


SERVICE = web.AppKey("service", Service)


async def _metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    pool = service.find(WorkerPool)
    if pool is not None:
        await pool.refresh()  # the serving processes' counts as of now
    body = await asyncio.get_running_loop().run_in_executor(None, exposition, service)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    problems = await service.readiness()
    warnings = await service.warnings()
    extra = {"warnings": warnings} if warnings else {}
    if problems:
        return web.json_response({"status": "not ready", "problems": problems, **extra}, status=503)
    return web.json_response({"status": "ready", **extra})


def build_service(config: Config, components: list[Component] | None = None) -> Service:
    """Share out file descriptors, open the HSM and the registry, assemble the application (nothing
    listens yet)."""
    http = config.http
    try:
        # with serving processes, this process's public connections are those they hand over: a share (never
        # more than max_connections itself, which the share's floor may be)
        public = min(http.max_connections, share(http.max_connections, http.workers)) if http.workers > 1 \
            else http.max_connections
        budget = plan_descriptors(public, config.admin.max_connections if config.admin is not None else None,
                                  internal=internal(http.workers))
    except DescriptorBudgetError as exc:
        raise ConfigError(config.path, "http.max_connections", str(exc)) from None
    hsm = open_hsm(config)
    _inspect_hsm(config, hsm)
    registry = open_config_registry(config)
    app = web.Application(client_max_size=64 * 1024)  # no middlewares: see fronted
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    gate = ConnectionGate(budget.public_cap, config.http.request_timeout, idle_timeout=config.http.idle_timeout)
    service = Service(config, hsm, registry, app, AsyncIOScheduler(timezone="UTC"), gate,
                      list(components or []), descriptors=budget)
    hsm.on_signature = service.metrics.hsm_sign.observe
    app[SERVICE] = service
    return service


def _inspect_hsm(config: Config, hsm: HsmSigner) -> None:
    """Say what the module offers and which mechanism each key uses; refuse to start with a key it cannot use.

    A token that cannot be reached now is not a reason to refuse: the service starts not ready, and each
    key's mechanism is chosen at its first signature instead.
    """
    try:
        report = inspect_hsm(config, hsm)
    except HsmUnavailable as exc:
        log.warning("HSM: token capabilities not read at start (%s); they will be at the first signature", exc)
        return
    for line in report.lines():
        (log.warning if "WARNING" in line or "MISSING" in line or "REFUSED" in line else log.info)("HSM: %s", line)
    if report.unusable:
        hsm.close()
        raise KeyUnusable("the HSM cannot sign as configured: " + "; ".join(report.unusable))


async def run_service(service: Service, stop: asyncio.Event) -> None:
    """Start components, listen, wait for ``stop``, then shut down cleanly. Under systemd
    (``Type=notify``): the watchdog is fed from the start, ``READY=1`` once ``/readyz`` would say ready.
    With ``[http] workers`` > 1 the serving processes listen on the public port and this process serves
    them on a private unix socket (``directory/service/workers.py``)."""
    started: list[Component] = []
    http = service.config.http
    pool = service.find(WorkerPool)
    # with serving processes, this runner's connections are theirs: kept open longer than they keep them idle
    runner = web.AppRunner(service.app, access_log=None,
                           keepalive_timeout=http.idle_timeout if pool is None else max(http.idle_timeout, 60.0))
    listener: asyncio.AbstractServer | None = None
    systemd = Notifications()  # before any child process starts: they must not inherit NOTIFY_SOCKET
    systemd.start_watchdog()
    try:
        for component in service.components:
            await component.start(service)
            started.append(component)
        service.scheduler.start()
        await runner.setup()
        assert runner.server is not None
        runner.server.request_handler = fronted(runner.server.request_handler)  # type: ignore[arg-type]
        if pool is None:
            listener = await listen(runner, http.host, http.port, service.connections)
        else:
            port_free(http.host, http.port)  # another instance would share the port silently (SO_REUSEPORT)
            listener = await listen_unix(runner, pool.app_socket, pool.internal)
            await pool.launch(runner.server)
        log.info("listening on http://%s:%d (public base URL %s)%s", http.host, http.port, http.base_url,
                 f", {len(pool.slots)} serving processes" if pool is not None else "")
        systemd.announce_ready(service.readiness)
        await stop.wait()
    finally:
        log.info("shutting down")
        await systemd.stopping()
        if pool is not None:
            await pool.stop_workers()  # they hand requests to this process: they stop first
        if listener is not None:
            listener.close()
        service.connections.close_held()
        await service.connections.wait_held(HELD_GRACE)  # answers being signed on held connections
        await runner.cleanup()
        if service.scheduler.running:
            service.scheduler.shutdown(wait=False)
        for component in reversed(started):
            with contextlib.suppress(Exception):
                await component.stop()
        service.hsm.close()
        service.registry.close()


def serve(config: Config, components: list[Component] | None = None) -> int:
    """Run until SIGTERM/SIGINT; return the process exit code."""

    if config.http.workers > 1:
        components = with_workers(config, list(components or []))
    try:
        loop_name, factory = loop_factory(config.http.event_loop, config.admin is not None and config.admin.tls)
    except EventLoopUnavailable as exc:
        raise ConfigError(config.path, "http.event_loop", str(exc)) from None

    async def main() -> None:
        log.info("event loop: %s", loop_name)
        service = build_service(config, components)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_service(service, stop)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
    return 0
