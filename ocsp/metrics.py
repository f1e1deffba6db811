"""The OCSP part's metric families: request latency observed as answers go out, and the responder's
counters and cache sizes read when scraped (on a worker thread, never on the event loop)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ocsp.responder import OcspResponder

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class OcspMetrics:
    """``annuaire_ocsp_*``: one instance per OCSP component."""

    def __init__(self, responder: OcspResponder) -> None:
        self.responder = responder
        self.latency = Histogram("annuaire_ocsp_request_duration_seconds",
                                 "OCSP request handling time, by answer path (presigned, live, shed, error)",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=None)

    def collect(self) -> Iterator[Metric]:
        yield from self.latency.collect()
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
