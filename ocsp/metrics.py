"""The OCSP part's metric families: request latency observed as answers go out, and the responder's
counters and cache sizes read when scraped (on a worker thread, never on the event loop)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ocsp.responder import OcspResponder

LATENCY_NAME = "annuaire_ocsp_request_duration_seconds"
LATENCY_DOC = "OCSP request handling time, by answer path (presigned, live, shed, error)"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class OcspMetrics:
    """``annuaire_ocsp_*``: one instance per OCSP component. ``elsewhere``: the summed counts of the serving
    processes (``[http] workers``: ``by_status``, ``by_path``, ``latency`` {path: {le: cumulative, "sum": s}}),
    added to this process's own so that each family tells the whole service's truth."""

    def __init__(self, responder: OcspResponder) -> None:
        self.responder = responder
        self.latency = Histogram(LATENCY_NAME, LATENCY_DOC,
                                 ["path"], buckets=LATENCY_BUCKETS, registry=None)
        self.elsewhere: Callable[[], dict[str, Any]] | None = None

    def collect(self) -> Iterator[Metric]:
        stats = self.responder.stats
        others = self.elsewhere() if self.elsewhere is not None else None
        if others is None:
            yield from self.latency.collect()
        else:
            yield self._latency_with(others.get("latency", {}))
        by_status = CounterMetricFamily("annuaire_ocsp_responses", "OCSP responses by responseStatus",
                                        labels=["status"])
        for status, n in sorted(_plus(stats.by_status, others, "by_status").items()):
            by_status.add_metric([status], n)
        by_path = CounterMetricFamily("annuaire_ocsp_responses_by_path", "OCSP responses by answer path",
                                      labels=["path"])
        for path, n in sorted(_plus(stats.by_path, others, "by_path").items()):
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

    def _latency_with(self, others: dict[str, dict[str, float]]) -> Metric:
        """This process's latency histogram plus the serving processes' cumulative buckets, per path."""
        merged: dict[str, dict[str, float]] = {path: dict(v) for path, v in others.items()}
        for family in self.latency.collect():
            for sample in family.samples:
                path = sample.labels["path"]
                if sample.name.endswith("_bucket"):
                    key = sample.labels["le"]
                elif sample.name.endswith("_sum"):
                    key = "sum"
                else:
                    continue
                into = merged.setdefault(path, {})
                into[key] = into.get(key, 0.0) + sample.value
        family = HistogramMetricFamily(LATENCY_NAME, LATENCY_DOC, labels=["path"])
        for path, values in sorted(merged.items()):
            buckets = sorted(((le, n) for le, n in values.items() if le != "sum"),
                             key=lambda b: float(b[0]))
            family.add_metric([path], buckets, values.get("sum", 0.0))
        return family


def _plus(own: dict[str, int], others: dict[str, Any] | None, key: str) -> dict[str, int]:
    if not others:
        return own
    total = dict(own)
    for name, n in others.get(key, {}).items():
        total[name] = total.get(name, 0) + int(n)
    return total
