"""The OCSP part's metric families: request latency observed as answers go out, and the responder's
counters and cache sizes read when scraped (on a worker thread, never on the event loop)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from ocsp.live import SOURCES, Backlog
from ocsp.responder import OcspResponder

LATENCY_NAME = "annuaire_ocsp_request_duration_seconds"
LATENCY_DOC = "OCSP request handling time, by answer path (presigned, live, shed, error)"
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

    def cumulative(self) -> dict[str, dict[str, float]]:
        """{path: {le: cumulative count, "sum": seconds}}: what a serving process reports to the main one."""
        out: dict[str, dict[str, float]] = {}
        for path, counts in self.counts.items():
            values, total = out.setdefault(path, {}), 0
            for bound, n in zip((*map(floatToGoString, LATENCY_BUCKETS), "+Inf"), list(counts), strict=True):
                total += n
                values[bound] = total
            values["sum"] = self.sums[path]
        return out

    def family(self, elsewhere: dict[str, dict[str, float]] | None = None) -> HistogramMetricFamily:
        """This process's histogram, plus ``elsewhere`` (the serving processes' ``cumulative()``, summed)."""
        merged = self.cumulative()
        for path, values in (elsewhere or {}).items():
            into = merged.setdefault(path, {})
            for key, value in values.items():
                into[key] = into.get(key, 0.0) + value
        family = HistogramMetricFamily(LATENCY_NAME, LATENCY_DOC, labels=["path"])
        for path, values in sorted(merged.items()):
            buckets = sorted(((le, n) for le, n in values.items() if le != "sum"), key=lambda b: float(b[0]))
            family.add_metric([path], buckets, values.get("sum", 0.0))
        return family


class OcspMetrics:
    """``annuaire_ocsp_*``: one instance per OCSP component. ``elsewhere``: the summed counts of the serving
    processes (``[http] workers``: ``by_status``, ``by_path``, ``latency`` {path: {le: cumulative, "sum": s}}),
    added to this process's own so that each family tells the whole service's truth."""

    def __init__(self, responder: OcspResponder, backlog: Backlog | None = None) -> None:
        self.responder = responder
        self.backlog = backlog  # the signing lane's bound on live work (``ocsp.live``)
        self.latency = PathLatency()
        self.elsewhere: Callable[[], dict[str, Any]] | None = None

    def collect(self) -> Iterator[Metric]:
        stats = self.responder.stats
        others = self.elsewhere() if self.elsewhere is not None else None
        yield self.latency.family(others.get("latency") if others is not None else None)
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
        if self.backlog is not None:
            yield from backlog_families(self.backlog)


def backlog_families(backlog: Backlog) -> Iterator[Metric]:
    """The lane's bound: what waits now (every source: what ``cap`` bounds), and by source (``local``: this
    process's own connections; ``workers``: the serving processes', over livewire) what was given up at its
    deadline and what was turned away at once."""
    waiting = GaugeMetricFamily("annuaire_ocsp_live_backlog", "Live OCSP requests (every source) waiting in the "
                                "signing process for the signer, or at it")
    waiting.add_metric([], backlog.waiting)
    expired = CounterMetricFamily("annuaire_ocsp_live_expired", "Live OCSP requests given up at their deadline "
                                  "(request_timeout after they came, or were sent by a serving process): tryLater, "
                                  "not signed unless a signing thread had begun", labels=["source"])
    full = CounterMetricFamily("annuaire_ocsp_live_backlog_full", "Live OCSP requests answered tryLater at once, "
                               "the signing process's backlog of requests to sign full", labels=["source"])
    for source in SOURCES:
        expired.add_metric([source], backlog.expired[source])
        full.add_metric([source], backlog.full[source])
    yield from (waiting, expired, full)


def _plus(own: dict[str, int], others: dict[str, Any] | None, key: str) -> dict[str, int]:
    if not others:
        return own
    total = dict(own)
    for name, n in others.get(key, {}).items():
        total[name] = total.get(name, 0) + int(n)
    return total
