"""``/metrics``: Prometheus exposition of the service, built with prometheus_client.

Two kinds of series:
- histograms observed as things happen in this process (OCSP latency, CRL build time, HSM signature
  time, revocation-to-visibility for OCSP and CRL), held in ``Metrics``;
- values read when scraped (CRL numbers and freshness, counters kept by the components, registry
  counts, the directory outbox and the LDAP worker's visibility histogram, written by that other
  process into the registry), produced by ``ServiceCollector``.
A private ``CollectorRegistry`` per service: two services in one process (tests) never share series.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from directory.ops import histogram
from directory.publication import targets_of

if TYPE_CHECKING:
    from directory.service.app import Service

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BUILD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The histograms this process observes into."""

    def __init__(self) -> None:
        self.ocsp_latency = Histogram("annuaire_ocsp_request_duration_seconds",
                                      "OCSP request handling time, by answer path (presigned, live, shed, error)",
                                      ["path"], buckets=LATENCY_BUCKETS, registry=None)
        self.crl_build = Histogram("annuaire_crl_build_duration_seconds", "Time to build, sign, check and publish "
                                   "one CRL", ["issuer", "kind"], buckets=BUILD_BUCKETS, registry=None)
        self.hsm_sign = Histogram("annuaire_hsm_sign_duration_seconds", "One PKCS#11 signature",
                                  buckets=LATENCY_BUCKETS, registry=None)
        self.visibility = Histogram("annuaire_revocation_visibility_seconds",
                                    "From a status change committed in the registry to its visibility in a channel",
                                    ["channel"], buckets=histogram.VISIBILITY_BUCKETS, registry=None)

    def collect(self) -> Iterator[Metric]:
        for h in (self.ocsp_latency, self.crl_build, self.hsm_sign):
            yield from h.collect()


class ServiceCollector:
    """Reads the service's state when scraped (called on a worker thread, never on the event loop)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        yield from service.metrics.collect()
        yield from self._visibility()
        now = time.time()
        yield from self._crls(now)
        yield from self._ocsp()
        yield from self._hsm()
        yield from self._registry()
        yield from self._ldap(now)
        yield from self._http()
        check = self.service.component("check")
        if check is not None:  # the publication checker (directory/check)
            yield from check.metric_families()

    def _crls(self, now: float) -> Iterator[Metric]:
        config, registry = self.service.config, self.service.registry
        labels = ["issuer", "scope", "kind"]
        number = GaugeMetricFamily("annuaire_crl_number", "CRL number of the newest published CRL", labels=labels)
        remaining = GaugeMetricFamily("annuaire_crl_next_update_seconds", "Seconds until nextUpdate of the newest "
                                      "published CRL (negative: expired)", labels=labels)
        size = GaugeMetricFamily("annuaire_crl_size_bytes", "Size of the newest published CRL", labels=labels)
        entries = GaugeMetricFamily("annuaire_crl_entries", "Entries of the newest published CRL", labels=labels)
        for issuer in config.issuers:
            for target in targets_of(issuer):
                record = registry.crl_latest(issuer.name, target.scope, target.kind)
                if record is None:
                    continue
                values = [issuer.name, target.scope, target.kind]
                number.add_metric(values, record.number)
                remaining.add_metric(values, record.next_update - now)
                size.add_metric(values, record.size or 0)
                entries.add_metric(values, record.entries or 0)
        yield from (number, remaining, size, entries)
        crl = self.service.component("crl")
        if crl is not None:
            published = CounterMetricFamily("annuaire_crl_published", "CRLs published", labels=["issuer"])
            failed = CounterMetricFamily("annuaire_crl_failed", "CRL builds that failed", labels=["issuer"])
            for name, publisher in crl.publishers.items():
                published.add_metric([name], publisher.stats.published)
                failed.add_metric([name], publisher.stats.failed)
            yield from (published, failed)

    def _ocsp(self) -> Iterator[Metric]:
        ocsp = self.service.component("ocsp")
        if ocsp is None or ocsp.responder is None:
            return
        stats = ocsp.responder.stats
        by_status = CounterMetricFamily("annuaire_ocsp_responses", "OCSP responses by responseStatus",
                                        labels=["status"])
        for status, n in sorted(stats.by_status.items()):
            by_status.add_metric([status], n)
        by_path = CounterMetricFamily("annuaire_ocsp_responses_by_path", "OCSP responses by answer path",
                                      labels=["path"])
        for path, n in sorted(stats.by_path.items()):
            by_path.add_metric([path], n)
        shed = CounterMetricFamily("annuaire_ocsp_shed", "Requests answered tryLater because live signing was full")
        shed.add_metric([], stats.shed)
        presigned = CounterMetricFamily("annuaire_ocsp_presigned", "Responses signed ahead of requests")
        presigned.add_metric([], stats.presigned)
        cached = GaugeMetricFamily("annuaire_ocsp_cached_responses", "Pre-signed responses held", labels=["issuer"])
        totals: dict[str, int] = {}
        for (issuer, _), entries in ocsp.responder.cache.items():
            totals[issuer] = totals.get(issuer, 0) + len(entries)
        for issuer, n in sorted(totals.items()):
            cached.add_metric([issuer], n)
        cache_bytes = GaugeMetricFamily("annuaire_ocsp_cache_bytes", "Bytes held by the OCSP caches that traffic "
                                        "fills (bounded by [http] ocsp_request_cache / ocsp_answer_cache)",
                                        labels=["cache"])
        evictions = CounterMetricFamily("annuaire_ocsp_cache_evictions", "Entries pushed out of those caches",
                                        labels=["cache"])
        for name, lru in (("requests", ocsp.responder.requests), ("answers", ocsp.responder.answers)):
            cache_bytes.add_metric([name], lru.bytes)
            evictions.add_metric([name], lru.evictions)
        yield from (by_status, by_path, shed, presigned, cached, cache_bytes, evictions)

    def _hsm(self) -> Iterator[Metric]:
        stats = self.service.hsm.stats
        for name, doc, value in (("signatures", "PKCS#11 signatures made", stats.signatures),
                                 ("errors", "PKCS#11 operations that failed", stats.errors),
                                 ("relogins", "HSM sessions opened and logged in again", stats.relogins),
                                 ("reinitializations", "PKCS#11 module re-initialisations", stats.reinits)):
            family = CounterMetricFamily(f"annuaire_hsm_{name}", doc)
            family.add_metric([], value)
            yield family

    def _http(self) -> Iterator[Metric]:
        gate = self.service.connections
        open_now = GaugeMetricFamily("annuaire_http_connections_open", "Open connections on the public listener")
        open_now.add_metric([], gate.open)
        refused = CounterMetricFamily("annuaire_http_connections_refused", "Connections turned away (503) because "
                                      "max_connections were open")
        refused.add_metric([], gate.refused)
        yield from (open_now, refused)
        gates = [gate] + ([self.service.admin_connections] if self.service.admin_connections is not None else [])
        timeouts = CounterMetricFamily("annuaire_http_request_timeouts", "Connections aborted because a request "
                                       "did not arrive whole within request_timeout", labels=["listener"])
        for g in gates:
            timeouts.add_metric([g.name], g.timed_out)
        yield timeouts
        admin = self.service.admin_connections
        if admin is not None:
            open_admin = GaugeMetricFamily("annuaire_admin_connections_open", "Open connections on the admin listener")
            open_admin.add_metric([], admin.open)
            refused_admin = CounterMetricFamily("annuaire_admin_connections_refused", "Admin connections turned away "
                                                "because [admin] max_connections were open")
            refused_admin.add_metric([], admin.refused)
            yield from (open_admin, refused_admin)

    def _registry(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("annuaire_certificates", "Certificates in the registry", labels=["issuer", "status"])
        for issuer, by_status in self.service.registry.counts().items():
            for status, n in by_status.items():
                family.add_metric([issuer, status], n)
        yield family

    def _ldap(self, now: float) -> Iterator[Metric]:
        if self.service.config.ldap is None:
            return
        registry = self.service.registry
        depth, _, oldest = registry.ldap_outbox_stats()
        state = {name: registry.state_get(name) for name in
                 ("last_full", "last_full_drift", "last_verify_drift", "failures", "last_incremental")}

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], value)
            return family

        yield gauge("annuaire_ldap_outbox_depth", "Changes waiting to be written to the directory", depth)
        yield gauge("annuaire_ldap_sync_lag_seconds", "Age of the oldest change waiting for the directory (0: none)",
                    max(0.0, now - oldest) if oldest is not None else 0.0)
        yield gauge("annuaire_ldap_drift_repaired", "Differences repaired by the last full reconciliation",
                    _int(state["last_full_drift"]))
        yield gauge("annuaire_ldap_drift_found", "Differences found by the last verify",
                    _int(state["last_verify_drift"]))
        yield gauge("annuaire_ldap_sync_failures", "Consecutive failed sync attempts", _int(state["failures"]))
        yield gauge("annuaire_ldap_refused", "Outbox rows whose write the directory refused (kept, retried with "
                    "backoff)", registry.ldap_refused(0)[0])
        last = max(_int(state["last_full"]), _int(state["last_incremental"]))
        yield gauge("annuaire_ldap_last_sync_timestamp_seconds", "When the last sync pass ended", last)

    def _visibility(self) -> Iterator[Metric]:
        """OCSP and CRL observed here; the directory's, observed by the LDAP worker, added as channel=ldap."""
        for family in self.service.metrics.visibility.collect():
            if self.service.config.ldap is not None:
                data: dict[str, Any] = histogram.load(self.service.registry.state_get("visibility"))
                name = family.name
                for bound, count in zip(data["buckets"], data["counts"], strict=True):
                    family.add_sample(f"{name}_bucket", {"channel": "ldap", "le": _bound(bound)}, count)
                family.add_sample(f"{name}_bucket", {"channel": "ldap", "le": "+Inf"}, data["count"])
                family.add_sample(f"{name}_count", {"channel": "ldap"}, data["count"])
                family.add_sample(f"{name}_sum", {"channel": "ldap"}, data["sum"])
            yield family


def _int(value: str | None) -> int:
    return int(value) if value not in (None, "") else 0


def _bound(value: float) -> str:
    return floatToGoString(value)


def exposition(service: Service) -> bytes:
    """The text exposition format (blocking: reads the registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service))
    return generate_latest(registry)
