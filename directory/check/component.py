"""``annuaire serve``'s publication checker: cycles on a thread of its own, results in metrics and readiness.

The checker is a client of the public listener like any relying party; its cycles (HTTP, LDAP, registry
reads, parsing) run on a dedicated single-thread executor, never on the event loop nor on the executors
that answer requests, sign or build CRLs. What it finds shows in ``annuaire_publication_mismatch{channel}``,
as a ``publication`` reason in ``/readyz`` (failing it only with ``[check] fail_readiness = true``), in the
registry (the page's and ``annuaire status``'s health) and as one log line per disagreement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from directory.check.checker import PublicationChecker
from directory.check.model import CHANNELS
from directory.registry import RegistryError

if TYPE_CHECKING:
    from directory.service.app import Service

log = logging.getLogger(__name__)


class CheckComponent:
    name = "check"

    def __init__(self) -> None:
        self.checker: PublicationChecker | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="publication-check")
        self._task: asyncio.Task[None] | None = None

    async def start(self, service: Service) -> None:
        settings = service.config.check
        if not settings.enabled:
            return
        self.checker = PublicationChecker(service.config, service.registry, settings)
        if settings.fail_readiness:
            service.readiness_checks["publication"] = self.readiness
        else:
            service.readiness_warnings["publication"] = self.readiness
        service.metrics.register(self.metric_families)
        self._task = asyncio.create_task(self._loop(settings.interval))
        log.info("publication checker: every %d s against %s, every certificate at least once per %d s",
                 settings.interval, self.checker.http.base_url, settings.full_cycle)

    async def _loop(self, interval: float) -> None:
        assert self.checker is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)  # the first cycle after one interval: the service is up by then
            try:
                await loop.run_in_executor(self._executor, self.checker.cycle)
            except asyncio.CancelledError:
                raise
            except (RegistryError, OSError) as exc:  # the registry away (its own reasons say so): next cycle
                log.error("publication check cycle failed: %s", exc)
            except Exception:  # anything else is a bug: logged with its traceback, the next cycle runs
                log.exception("publication check cycle failed")

    async def stop(self) -> None:
        if self.checker is not None:
            self.checker.stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        if self.checker is not None:
            self.checker.close()

    async def readiness(self) -> str | None:
        return self.checker.summary() if self.checker is not None else None

    def metric_families(self) -> Iterator[Metric]:
        """Read at scrape (a worker thread): plain reads of counters the checker thread updates."""
        checker = self.checker
        if checker is None:
            return
        counts, stats = checker.counts(), checker.stats
        mismatch = GaugeMetricFamily("annuaire_publication_mismatch", "Certificates (or whole CRL files) on which "
                                     "a public channel disagrees with the registry now", labels=["channel"])
        checked = CounterMetricFamily("annuaire_publication_checked", "Certificate statuses compared with a "
                                      "public channel", labels=["channel"])
        troubles = CounterMetricFamily("annuaire_publication_check_errors", "Looks at a channel that got no "
                                       "answer (unreachable, tryLater)", labels=["channel"])
        for channel in CHANNELS:
            mismatch.add_metric([channel], counts[channel])
            checked.add_metric([channel], stats.checked[channel])
            troubles.add_metric([channel], stats.troubles[channel])
        cycles = CounterMetricFamily("annuaire_publication_check_cycles", "Checker cycles run")
        cycles.add_metric([], stats.cycles)
        cpu = CounterMetricFamily("annuaire_publication_check_cpu_seconds", "CPU time of the checker's thread")
        cpu.add_metric([], stats.cpu_seconds)
        last = GaugeMetricFamily("annuaire_publication_check_last_timestamp_seconds", "When the last cycle ended")
        last.add_metric([], stats.last_cycle)
        took = GaugeMetricFamily("annuaire_publication_check_last_duration_seconds", "How long the last cycle took")
        took.add_metric([], stats.last_seconds)
        yield from (mismatch, checked, troubles, cycles, cpu, last, took)
