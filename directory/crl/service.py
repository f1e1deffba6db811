"""CRL publication inside ``annuaire serve``: publishers, schedules, revocation triggers and HTTP routes.

Per issuer whose key is here:
- every ``interval``: full CRL(s) (and the delta);
- every ``delta_interval`` when deltas are on: a delta against the newest full CRL;
- a freshness watchdog: whenever ``now >= nextUpdate - overlap`` the CRL is rebuilt, so a CRL never
  expires because nothing was revoked (this also covers a missed schedule or a clock jump);
- when ``on_revocation_delay`` is set, the registry's change log is polled every ``delay / 2`` seconds
  (at least 1 s): a status change made by any process that no full CRL lists yet gets a new full CRL
  (its partitions, and the delta when deltas are on) within ``on_revocation_delay``: relying parties
  that never read deltas, most of them, see it as soon as delta-aware ones.
Builds run on a worker thread, one at a time per issuer; serving never waits for them.
An offline issuer (no key here) builds nothing: its CRL is published (``publish``), served like the
others, and its nextUpdate watched (a readiness warning within ``expiry_warning``, a failure once expired).

Several nodes on one PostgreSQL registry: each issuer's CRLs are built by the one node holding its lease
(``crl:NAME``; tried every ``LEASE_CHECK`` seconds, so a dead builder is replaced within that); every node
serves them: the others copy each newly published CRL from the registry into their own files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web
from cryptography import x509

from directory.crl.builder import CrlBuildError, CrlPublisher, PublishedCrl, opened, publishers_for
from directory.crl.files import read_regular
from directory.crl.http import CERT_NAME, CRL_NAME, CrlFiles, ServedFile, ca_file, respond
from directory.crl.metrics import CrlMetrics, offline_crl_problem
from directory.crl.publish import publish_crl
from directory.crl.visibility import CrlVisibility
from directory.hsm.signer import HsmError
from directory.publication import Target, crl_dir, delta_target, full_crl_name, targets_of
from directory.registry.backends import Lease

if TYPE_CHECKING:
    from directory.service.app import Service

log = logging.getLogger(__name__)
LEASE_CHECK = 2.0  # seconds between attempts to take over the building of an issuer's CRLs
T = TypeVar("T")


class CrlComponent:
    """Mounts /crl/ and /ca/ and keeps every issuer's CRLs fresh."""

    name = "crl"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.publishers: dict[str, CrlPublisher] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="crl")
        self._ca_files: dict[str, ServedFile] = {}
        self.files: CrlFiles | None = None
        self.visibility: CrlVisibility | None = None  # when served CRLs first list each status change
        self.service: Service | None = None
        self.leases: dict[str, Lease] = {}
        self.leading: set[str] = set()
        self._local_numbers: dict[str, int] = {}  # file name -> cRLNumber of the file we serve
        self._follower: asyncio.Task[None] | None = None

    async def start(self, service: Service) -> None:
        config = service.config
        self.service = service
        self.registry = service.registry
        self.publishers = publishers_for(config, opened(service.hsm), service.registry, self.clock)
        self._locks = {name: asyncio.Lock() for name in self.publishers}
        self.metrics = CrlMetrics(config.issuers, self.publishers, self.registry, self.clock)
        service.metrics.register(self.metrics.collect)
        cap = min(i.crl.interval for i in config.issuers)
        self.files = CrlFiles(crl_dir(config), cap, self.clock)
        self.files.refresh_all()
        self._ca_files = {i.name: ca_file(i.certificate) for i in config.issuers}
        self.visibility = CrlVisibility(self.registry, config.node,
                                        service.metrics.visibility.labels("crl").observe, self.clock)
        await self._in_thread(self.visibility.load, list(self.publishers))
        service.app.router.add_get("/crl/{name}", self._serve_crl)
        service.app.router.add_get("/ca/{name}", self._serve_ca)
        for name, publisher in self.publishers.items():
            settings = publisher.settings
            service.add_job(self.build, "interval", seconds=settings.interval, args=[name, "all"],
                            id=f"crl-{name}")
            if settings.delta:
                service.add_job(self.build, "interval", seconds=settings.delta_interval, args=[name, "delta"],
                                id=f"crl-delta-{name}")
            if settings.on_revocation_delay is not None:
                period = max(1, settings.on_revocation_delay // 2)
                service.add_job(self.build_if_changed, "interval", seconds=period, args=[name],
                                id=f"crl-changes-{name}")
        service.add_job(self.watchdog, "interval", seconds=30, id="crl-watchdog")
        service.readiness_checks["crl"] = self.readiness
        service.readiness_warnings["crl-offline"] = self.offline_warnings
        self.leases = {name: self.registry.lease(f"crl:{name}") for name in self.publishers}
        if self.registry.keeps_crl_bytes:  # several nodes: follow what the others publish
            for issuer in config.issuers:
                for target in targets_of(issuer):
                    self._local_numbers[target.filename] = _file_number(self.files.directory / target.filename)
            await self._in_thread(self.follow)
            service.add_job(self._take_leases, "interval", seconds=LEASE_CHECK, id="crl-leases")
            self._follower = asyncio.create_task(self._follow_loop())
        await self.watchdog()  # publish at start-up what is missing or due

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        self._executor.shutdown(wait=True)
        if self.files is not None:
            self.files.close()
        for lease in self.leases.values():
            lease.release()

    # -- decisions ----------------------------------------------------------------------------
    def due(self, name: str, now: float | None = None) -> bool:
        """True when a full CRL of ``name`` is missing or within ``overlap`` of its nextUpdate."""
        publisher = self.publishers[name]
        now = self.clock() if now is None else now
        for target in publisher.full_targets():
            latest = self.registry.crl_latest(name, target.scope, "full")
            if latest is None or now >= latest.next_update - publisher.settings.overlap:
                return True
            if latest.this_update > now:  # the clock went back: do not keep a CRL from the future
                return True
        return False

    def changed(self, name: str) -> bool:
        """True when a status change is in no published full CRL yet (a delta listing it is not enough:
        most relying parties read only the full CRL the certificates' CDPs name)."""
        latest = self.registry.crl_latest(name, "main", "full")
        return latest is None or self.registry.change_seq(name) > latest.change_seq

    # -- jobs ---------------------------------------------------------------------------------
    async def watchdog(self) -> None:
        for name in self.publishers:
            await self._in_thread(self._count_served, name)
            if await self._in_thread(self.due, name):
                await self.build(name, "all")

    async def build_if_changed(self, name: str) -> None:
        await self._in_thread(self._count_served, name)  # CRLs another process published (annuaire crl build)
        if await self._in_thread(self.changed, name):
            await self.build(name, "changes")

    async def _take_leases(self) -> None:
        """Try to become the builder of each issuer whose builder is gone; build what is due at once."""
        for name in self.publishers:
            if name not in self.leading and await self._lead(name) and await self._in_thread(self.due, name):
                await self.build(name, "all")

    async def _lead(self, name: str) -> bool:
        lease = self.leases.get(name)
        held = lease is None or bool(await self._in_thread(lease.try_acquire))
        if held and name not in self.leading:
            self.leading.add(name)
            if self.registry.keeps_crl_bytes:
                log.info("this node now builds the CRLs of %s", name, extra={"issuer": name})
        elif not held and name in self.leading:
            self.leading.discard(name)
            log.warning("this node no longer builds the CRLs of %s (lease lost)", name, extra={"issuer": name})
        return held

    async def _follow_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            token = self.registry.change_token("crls")
            try:
                await self._in_thread(self.follow)
            except Exception as exc:  # a registry hiccup: the files already served stay served
                log.warning("CRL follow-up from the registry failed: %s", exc)
            await loop.run_in_executor(None, self.registry.wait_for, "crls", 1.0, token)

    def follow(self) -> int:
        """Copy CRLs published by another node (newer than the file we serve) into our files; atomic."""
        assert self.files is not None
        copied = 0
        for issuer in self.service.config.issuers if self.service else ():  # offline issuers too
            name, before = issuer.name, copied
            for target in targets_of(issuer):
                record = self.registry.crl_latest(name, target.scope, target.kind)
                if record is None or record.number <= self._local_numbers.get(target.filename, 0):
                    continue
                data = self.registry.crl_bytes(name, target.scope, target.kind, record.number)
                if data is None:
                    continue
                _write_atomically(self.files.directory / target.filename, data)
                self._local_numbers[target.filename] = record.number
                self.files.refresh(target.filename)
                copied += 1
                log.info("CRL %s number %d taken from the registry", target.filename, record.number,
                         extra={"issuer": name})
            if copied > before:
                self._count_served(name)
        return copied

    async def build(self, name: str, what: str = "all") -> list[PublishedCrl]:
        """``all``: full CRL(s) and delta, the full one the delta's new base; ``changes``: the same for a status
        change, the delta keeping its base; ``delta``: the delta alone."""
        publisher = self.publishers[name]
        if not await self._lead(name):
            return []  # another node builds this issuer's CRLs; we serve what it publishes
        async with self._locks[name]:
            try:
                if what == "delta" and self.registry.crl_latest(name, "main", "full") is not None:
                    result = [await self._in_thread(publisher.publish, publisher.delta_target())]
                else:  # a rebuild for a revocation keeps the delta's base (clients hold it)
                    result = await self._in_thread(publisher.publish_all, what != "changes")
            except (CrlBuildError, HsmError) as exc:
                log.error("CRL build for %s failed: %s", name, exc)
                return []
        assert self.files is not None
        for crl in result:  # load the new bytes off the event loop; PEM forms are derived on first request
            await self._in_thread(self.files.refresh, crl.path.name)
            self._local_numbers[crl.path.name] = max(self._local_numbers.get(crl.path.name, 0), crl.record.number)
        await self._in_thread(self._observe, name, result)
        return result

    def _observe(self, name: str, published: list[PublishedCrl]) -> None:
        """Build times, and how long the status changes a served CRL now lists waited to be in one."""
        if self.service is None:
            return
        for crl in published:
            self.metrics.build.labels(name, crl.target.kind).observe(crl.seconds)
        seq = max((c.record.change_seq for c in published if c.target.scope == "main"), default=0)
        if self.visibility is not None:
            self.visibility.served(name, seq)

    def _count_served(self, name: str) -> None:
        """Observe the status changes the newest CRLs of ``name`` this node serves list (whoever built them)."""
        if self.visibility is None:
            return
        seq = 0
        for target in (Target("full", "main", full_crl_name(name)), delta_target(name)):
            record = self.registry.crl_latest(name, "main", target.kind)
            served = not self.registry.keeps_crl_bytes or self._local_numbers.get(target.filename, 0) >= (
                record.number if record is not None else 0)
            if record is not None and served:
                seq = max(seq, record.change_seq)
        self.visibility.served(name, seq)

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def publish(self, name: str, data: bytes, actor: str) -> PublishedCrl:
        """Install a CRL signed elsewhere as ``name``'s CRL (``publish.publish_crl``), then serve it."""
        assert self.service is not None and self.files is not None
        issuer = self.service.config.issuer(name)
        lock = self._locks.get(name) or asyncio.Lock()
        async with lock:  # never while this node builds the same issuer's CRL
            published = await self._in_thread(publish_crl, issuer, self.registry, self.files.directory,
                                              self.service.config.http.base_url, data, actor, self.clock)
        await self._in_thread(self.files.refresh, published.path.name)
        self._local_numbers[published.path.name] = published.record.number
        return published

    async def readiness(self) -> str | None:
        now = self.clock()
        problems = []
        for issuer in self.service.config.issuers if self.service else ():
            for target in targets_of(issuer):
                if target.kind != "full":
                    continue
                served = await self.files.get(target.filename) if self.files else None
                hint = " (signed offline: `annuaire crl publish`)" if issuer.offline else ""
                if served is None:
                    problems.append(f"{target.filename} not published{hint}")
                elif served.expires is not None and served.expires <= now:
                    problems.append(f"{target.filename} expired{hint}")
        return "; ".join(problems) or None

    async def offline_warnings(self) -> str | None:
        """Offline issuers whose CRL must be signed again soon (a warning: it is still valid)."""
        now = self.clock()
        warnings = []
        for issuer in self.service.config.issuers if self.service else ():
            found = await self._in_thread(offline_crl_problem, issuer, self.registry, now)
            if found is not None and not found[0]:
                warnings.append(found[1])
        return "; ".join(warnings) or None

    # -- HTTP -----------------------------------------------------------------------------------
    async def _serve_crl(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not CRL_NAME.match(name) or self.files is None:
            raise web.HTTPNotFound(text="no such CRL\n")
        served = await self.files.get(name)
        if served is None:
            raise web.HTTPNotFound(text="no such CRL\n")
        return respond(request, served, self.files.max_age_cap, self.clock())

    async def _serve_ca(self, request: web.Request) -> web.Response:
        match = CERT_NAME.match(request.match_info["name"])
        served = self._ca_files.get(match.group(1)) if match else None
        if served is None:
            raise web.HTTPNotFound(text="no such CA certificate\n")
        return respond(request, served, 86400, self.clock())


def _file_number(path: Path) -> int:
    """cRLNumber of a CRL file we already have (0 when absent or unreadable)."""
    try:
        crl = x509.load_der_x509_crl(read_regular(path))
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return 0


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.follow.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


__all__ = ["CrlComponent", "PublishedCrl", "Target", "crl_dir", "publishers_for"]
