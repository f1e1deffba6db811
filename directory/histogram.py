"""A histogram kept in the registry, for observations made in another process (the LDAP worker).

prometheus_client's histograms live in one process; the worker's revocation-to-directory latencies are
merged into a small JSON document in ``ldap_state`` and exposed by the service's collector.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

# Seconds from a revocation to its visibility in a channel: OCSP and the directory are sub-second to
# seconds, CRLs follow on_revocation_delay (a minute by default) or the schedule.
VISIBILITY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


def merge(document: str | None, values: Iterable[float], buckets: tuple[float, ...] = VISIBILITY_BUCKETS) -> str:
    """``document`` (or an empty histogram) with ``values`` added; cumulative counts per upper bound."""
    data = load(document, buckets)
    counts: list[int] = data["counts"]
    for v in values:
        for i, bound in enumerate(buckets):
            if v <= bound:
                counts[i] += 1
        data["count"] += 1
        data["sum"] += v
    return json.dumps(data, separators=(",", ":"))


def load(document: str | None, buckets: tuple[float, ...] = VISIBILITY_BUCKETS) -> dict[str, Any]:
    """The stored histogram, or an empty one when absent or made with other buckets."""
    empty = {"buckets": list(buckets), "counts": [0] * len(buckets), "count": 0, "sum": 0.0}
    if not document:
        return empty
    try:
        data = json.loads(document)
    except ValueError:
        return empty
    if not isinstance(data, dict) or data.get("buckets") != list(buckets):
        return empty
    return data
