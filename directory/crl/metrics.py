"""The CRL part's metric families: build times observed here, the newest published CRL of every target
and the publishers' counters read when scraped (on a worker thread, never on the event loop)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from directory.crl.builder import CrlPublisher
from directory.publication import targets_of
from directory.registry import Registry

BUILD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class CrlMetrics:
    """``annuaire_crl_*``: one instance per CRL component."""

    def __init__(self, publishers: Mapping[str, CrlPublisher], registry: Registry,
                 clock: Callable[[], float]) -> None:
        self.publishers, self.registry, self.clock = publishers, registry, clock
        self.build = Histogram("annuaire_crl_build_duration_seconds", "Time to build, sign, check and publish "
                               "one CRL", ["issuer", "kind"], buckets=BUILD_BUCKETS, registry=None)

    def collect(self) -> Iterator[Metric]:
        yield from self.build.collect()
        yield from self._newest(self.clock())
        published = CounterMetricFamily("annuaire_crl_published", "CRLs published", labels=["issuer"])
        failed = CounterMetricFamily("annuaire_crl_failed", "CRL builds that failed", labels=["issuer"])
        for name, publisher in self.publishers.items():
            published.add_metric([name], publisher.stats.published)
            failed.add_metric([name], publisher.stats.failed)
        yield from (published, failed)

    def _newest(self, now: float) -> Iterator[Metric]:
        """Number, time left, size and entries of the newest published CRL of each target (registry rows)."""
        labels = ["issuer", "scope", "kind"]
        number = GaugeMetricFamily("annuaire_crl_number", "CRL number of the newest published CRL", labels=labels)
        remaining = GaugeMetricFamily("annuaire_crl_next_update_seconds", "Seconds until nextUpdate of the newest "
                                      "published CRL (negative: expired)", labels=labels)
        size = GaugeMetricFamily("annuaire_crl_size_bytes", "Size of the newest published CRL", labels=labels)
        entries = GaugeMetricFamily("annuaire_crl_entries", "Entries of the newest published CRL", labels=labels)
        for name, publisher in self.publishers.items():
            for target in targets_of(publisher.issuer):
                record = self.registry.crl_latest(name, target.scope, target.kind)
                if record is None:
                    continue
                values = [name, target.scope, target.kind]
                number.add_metric(values, record.number)
                remaining.add_metric(values, record.next_update - now)
                size.add_metric(values, record.size or 0)
                entries.add_metric(values, record.entries or 0)
        yield from (number, remaining, size, entries)
