"""The CRL part's metric families: build times observed here, the newest published CRL of every target
(built here or published from elsewhere), the publishers' counters, and whether an offline issuer's CRL is
due for renewal at its key ceremony; read when scraped (on a worker thread, never on the event loop)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from directory.config import IssuerConfig
from directory.crl.builder import CrlPublisher
from directory.publication import full_crl_name, targets_of
from directory.registry import Registry

BUILD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class CrlMetrics:
    """``annuaire_crl_*``: one instance per CRL component."""

    def __init__(self, issuers: Sequence[IssuerConfig], publishers: Mapping[str, CrlPublisher], registry: Registry,
                 clock: Callable[[], float]) -> None:
        self.issuers, self.publishers, self.registry, self.clock = issuers, publishers, registry, clock
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
        due = GaugeMetricFamily("annuaire_crl_renewal_due", "1 when an offline issuer's CRL is missing, expired or "
                                "within its expiry_warning of nextUpdate: sign and publish the next one",
                                labels=["issuer"])
        now = self.clock()
        for issuer in self.issuers:
            if issuer.offline:
                due.add_metric([issuer.name], 1 if offline_crl_problem(issuer, self.registry, now) else 0)
        yield due

    def _newest(self, now: float) -> Iterator[Metric]:
        """Number, time left, size and entries of the newest published CRL of each target (registry rows)."""
        labels = ["issuer", "scope", "kind"]
        number = GaugeMetricFamily("annuaire_crl_number", "CRL number of the newest published CRL", labels=labels)
        remaining = GaugeMetricFamily("annuaire_crl_next_update_seconds", "Seconds until nextUpdate of the newest "
                                      "published CRL (negative: expired)", labels=labels)
        size = GaugeMetricFamily("annuaire_crl_size_bytes", "Size of the newest published CRL", labels=labels)
        entries = GaugeMetricFamily("annuaire_crl_entries", "Entries of the newest published CRL", labels=labels)
        for issuer in self.issuers:
            name = issuer.name
            for target in targets_of(issuer):
                record = self.registry.crl_latest(name, target.scope, target.kind)
                if record is None:
                    continue
                values = [name, target.scope, target.kind]
                number.add_metric(values, record.number)
                remaining.add_metric(values, record.next_update - now)
                size.add_metric(values, record.size or 0)
                entries.add_metric(values, record.entries or 0)
        yield from (number, remaining, size, entries)


def offline_crl_problem(issuer: IssuerConfig, registry: Registry, now: float) -> tuple[bool, str] | None:
    """For an offline issuer: (failing, text) when its CRL is missing or expired (failing) or within
    ``expiry_warning`` of its nextUpdate; None when it is fine (or the issuer builds its own CRLs)."""
    if not issuer.offline:
        return None
    record = registry.crl_latest(issuer.name, "main", "full")
    filename = full_crl_name(issuer.name)
    if record is None:
        return True, f"{filename} not published (signed offline: publish it with `annuaire crl publish`)"
    left = record.next_update - now
    if left <= 0:
        return True, f"{filename} expired (number {record.number}); publish the next one signed offline"
    if left <= issuer.crl.expiry_warning:
        return False, (f"{filename} (number {record.number}) reaches its nextUpdate in {_days(left)}: sign the next "
                       "one at the key ceremony and publish it with `annuaire crl publish`")
    return None


def _days(seconds: float) -> str:
    return f"{seconds / 86400:.1f} days" if seconds >= 86400 else f"{seconds / 3600:.1f} hours"
