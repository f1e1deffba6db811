"""The OCSP part's metric families: request latency observed as answers go out, and the responder's
counters and cache sizes read when scraped (on a worker thread, never on the event loop)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from ocsp.responder import OcspResponder

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class PathLatency:
    """A histogram by answer path kept as plain counts: observing is a bisect and two additions, no lock and no
    label look-up (prometheus_client's ``labels().observe()`` cost more than a pre-signed answer). Observed on
    the event loop only; read when scraped."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}  # path -> per bucket (not cumulative), the last one past them all
        self.sums: dict[str, float] = {}

    def observe(self, path: str, seconds: float) -> None:
        counts = self.counts.get(path)
        if counts is None:
            counts = self.counts[path] = [0] * (len(LATENCY_BUCKETS) + 1)
            self.sums[path] = 0.0
        counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sums[path] += seconds

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily("annuaire_ocsp_request_duration_seconds",
                                       "OCSP request handling time, by answer path (presigned, live, shed, error)",
                                       labels=["path"])
        for path, counts in sorted(self.counts.items()):
            buckets, total = [], 0
            for bound, n in zip((*map(floatToGoString, LATENCY_BUCKETS), "+Inf"), list(counts), strict=True):
                total += n
                buckets.append((bound, total))
            family.add_metric([path], buckets, self.sums[path])
        return family


class OcspMetrics:
    """``annuaire_ocsp_*``: one instance per OCSP component."""

    def __init__(self, responder: OcspResponder) -> None:
        self.responder = responder
        self.latency = PathLatency()

    def collect(self) -> Iterator[Metric]:
        yield self.latency.family()
        stats = self.responder.stats
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
        for issuer, n in sorted(self.responder.presigned_counts().items()):
            cached.add_metric([issuer], n)
        cache_bytes = GaugeMetricFamily("annuaire_ocsp_cache_bytes", "Bytes held by the OCSP caches that traffic "
                                        "fills (bounded by [http] ocsp_request_cache / ocsp_answer_cache)",
                                        labels=["cache"])
        evictions = CounterMetricFamily("annuaire_ocsp_cache_evictions", "Entries pushed out of those caches",
                                        labels=["cache"])
        for name, lru in (("requests", self.responder.requests), ("answers", self.responder.answers)):
            cache_bytes.add_metric([name], lru.bytes)
            evictions.add_metric([name], lru.evictions)
        yield from (by_status, by_path, shed, presigned, cached, cache_bytes, evictions)
