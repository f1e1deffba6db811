"""What ``/metrics`` says about the process and its signers, beside what the parts report.

- ``annuaire_build_info``: which build runs (our version, Python, OpenSSL, the key libraries), value 1;
- the standard ``process_*`` and ``python_info`` families: prometheus_client adds them to its default
  registry only, and the service exposes a private one (two services in one process, tests);
- ``annuaire_certificate_expiry_seconds{issuer,role}``: seconds until notAfter of every configured CA
  certificate (``role="ca"``) and delegated OCSP signer (``role="ocsp-signer"``), negative once expired. A
  signer that expires breaks OCSP (and a CA its CRLs) for every relying party at once: alert well before.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from directory.config import Config
from directory.version import build_info


def standard_collectors() -> list[Collector]:
    """prometheus_client's process_* (CPU, memory, descriptors, start time) and python_info collectors,
    made for a private registry."""
    return [ProcessCollector(registry=None), PlatformCollector(registry=None)]


@functools.cache
def _build_labels() -> tuple[tuple[str, ...], tuple[str, ...]]:
    info = build_info()  # installed versions do not change while the process runs
    return tuple(info), tuple(info.values())


def build_info_family() -> Metric:
    names, values = _build_labels()
    family = GaugeMetricFamily("annuaire_build_info", "The running build: annuaire, Python, OpenSSL and key "
                               "library versions (value 1)", labels=list(names))
    family.add_metric(list(values), 1)
    return family


def certificate_expiry(config: Config, now: float) -> Iterator[Metric]:
    family = GaugeMetricFamily("annuaire_certificate_expiry_seconds", "Seconds until notAfter of each CA and "
                               "delegated OCSP signer certificate (negative: expired)", labels=["issuer", "role"])
    for issuer in config.issuers:
        family.add_metric([issuer.name, "ca"], issuer.certificate.not_valid_after_utc.timestamp() - now)
        signer = issuer.ocsp.signer_certificate if issuer.ocsp is not None else None
        if signer is not None:
            family.add_metric([issuer.name, "ocsp-signer"], signer.not_valid_after_utc.timestamp() - now)
    yield family
