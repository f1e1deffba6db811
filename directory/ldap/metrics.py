"""The directory part's metric families, read from the registry when scraped: the LDAP worker is another
process, it keeps its state (passes, failures, refusals, its visibility histogram) where the service reads it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from directory import histogram
from directory.registry import Registry


class LdapMetrics:
    """``annuaire_ldap_*``, and the worker's observations for ``annuaire_revocation_visibility_seconds``."""

    def __init__(self, registry: Registry, clock: Callable[[], float] = time.time) -> None:
        self.registry, self.clock = registry, clock

    def visibility(self) -> dict[str, Any]:
        """The worker's revocation-to-directory histogram (``histogram.load``'s form)."""
        return histogram.load(self.registry.state_get("visibility"))

    def collect(self) -> Iterator[Metric]:
        registry, now = self.registry, self.clock()
        depth, _, oldest = registry.ldap_outbox_stats()
        state = {name: registry.state_get(name) for name in
                 ("last_full", "last_full_drift", "last_verify_drift", "last_verify_repaired", "failures",
                  "last_incremental")}
        yield _gauge("annuaire_ldap_outbox_depth", "Changes waiting to be written to the directory", depth)
        yield _gauge("annuaire_ldap_sync_lag_seconds", "Age of the oldest change waiting for the directory (0: none)",
                     max(0.0, now - oldest) if oldest is not None else 0.0)
        yield _gauge("annuaire_ldap_drift_repaired", "Differences repaired by the last full reconciliation",
                     _int(state["last_full_drift"]))
        yield _gauge("annuaire_ldap_drift_found", "Differences found by the last verify",
                     _int(state["last_verify_drift"]))
        yield _gauge("annuaire_ldap_drift_outstanding", "Differences found by the last verify that no full "
                     "reconciliation has repaired since", 0 if state["last_verify_repaired"] else
                     _int(state["last_verify_drift"]))
        yield _gauge("annuaire_ldap_sync_failures", "Consecutive failed sync attempts", _int(state["failures"]))
        yield _gauge("annuaire_ldap_refused", "Outbox rows whose write the directory refused (kept, retried with "
                     "backoff)", registry.ldap_refused(0)[0])
        last = max(_int(state["last_full"]), _int(state["last_incremental"]))
        yield _gauge("annuaire_ldap_last_sync_timestamp_seconds", "When the last sync pass ended", last)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    family.add_metric([], value)
    return family


def _int(value: str | None) -> int:
    return int(value) if value not in (None, "") else 0
