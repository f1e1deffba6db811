"""``/metrics``: Prometheus exposition of the service, built with prometheus_client.

``Metrics`` is the service's collector: its own families (HSM signature time and counters, the registry's
certificate counts, the listeners' connections, the revocation-to-visibility histogram), then those each
part registers when it starts (``register``: CRL, OCSP, directory, publication checker), read at scrape
on a worker thread. Histograms are observed as things happen in this process; what another process
observes (the LDAP worker's visibility) is read from the registry and added under its channel.
One ``Metrics`` per service: two services in one process (tests) never share series. ``identity`` adds
the build, the standard process families and the seconds left on every CA and OCSP signer certificate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from directory import histogram
from directory.ops import identity

if TYPE_CHECKING:
    from directory.service.app import Service

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MetricSource = Callable[[], Iterable[Metric]]


class Metrics:
    """The histograms the service observes into, and the metric sources its parts registered."""

    def __init__(self) -> None:
        self.hsm_sign = Histogram("annuaire_hsm_sign_duration_seconds", "One PKCS#11 signature",
                                  buckets=LATENCY_BUCKETS, registry=None)
        self.visibility = Histogram("annuaire_revocation_visibility_seconds",
                                    "From a status change committed in the registry to its visibility in a channel",
                                    ["channel"], buckets=histogram.VISIBILITY_BUCKETS, registry=None)
        self._sources: list[MetricSource] = []
        self._visibility_elsewhere: dict[str, Callable[[], dict[str, Any]]] = {}

    def register(self, source: MetricSource) -> None:
        """Add a part's families to every scrape (``source`` runs on a worker thread, never on the loop)."""
        self._sources.append(source)

    def visibility_observed_elsewhere(self, channel: str, read: Callable[[], dict[str, Any]]) -> None:
        """Expose under ``channel`` a visibility histogram another process keeps (``histogram.load``'s form)."""
        self._visibility_elsewhere[channel] = read

    def sources(self) -> Iterator[Metric]:
        for source in self._sources:
            yield from source()

    def histograms(self) -> Iterator[Metric]:
        yield from self.hsm_sign.collect()
        for family in self.visibility.collect():
            for channel, read in self._visibility_elsewhere.items():
                _add_histogram(family, channel, read())
            yield family


def _add_histogram(family: Metric, channel: str, data: dict[str, Any]) -> None:
    name = family.name
    for bound, count in zip(data["buckets"], data["counts"], strict=True):
        family.add_sample(f"{name}_bucket", {"channel": channel, "le": floatToGoString(bound)}, count)
    family.add_sample(f"{name}_bucket", {"channel": channel, "le": "+Inf"}, data["count"])
    family.add_sample(f"{name}_count", {"channel": channel}, data["count"])
    family.add_sample(f"{name}_sum", {"channel": channel}, data["sum"])


class ServiceCollector:
    """The service's own families, then its parts' (called on a worker thread, never on the event loop)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        yield identity.build_info_family()
        yield from identity.certificate_expiry(self.service.config, time.time())
        yield from self.service.metrics.histograms()
        yield from self._hsm()
        yield from self._registry()
        yield from self._http()
        yield from self.service.metrics.sources()

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
        stalled = CounterMetricFamily("annuaire_http_stalled_readers", "Connections aborted because the client read "
                                      "nothing of the answers waiting for it (for request_timeout, or idle_timeout)",
                                      labels=["listener"])
        for g in gates:
            timeouts.add_metric([g.name], g.timed_out)
            stalled.add_metric([g.name], g.stalled)
        yield timeouts
        yield stalled
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


def exposition(service: Service) -> bytes:
    """The text exposition format (blocking: reads the registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service))
    for collector in identity.standard_collectors():
        registry.register(collector)
    return generate_latest(registry)
