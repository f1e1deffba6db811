"""Identity: `annuaire --version`, annuaire_build_info, and the seconds left on every CA and OCSP signer
certificate (checked against `openssl x509 -enddate`). The served /metrics (process_* families included)
is checked in test_admin_api with the service it already runs."""

from __future__ import annotations

import calendar
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from directory.config import load_config
from directory.ops import identity
from tests.conftest import run_cli


def _openssl_not_after(pem: Path) -> float:
    out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", str(pem)], capture_output=True, text=True,
                         check=True).stdout.strip()
    return calendar.timegm(time.strptime(out.removeprefix("notAfter="), "%b %d %H:%M:%S %Y GMT"))


def _samples(*families: object) -> dict[str, list]:
    registry = CollectorRegistry(auto_describe=False)

    class Fixed:
        def collect(self):  # type: ignore[no-untyped-def]
            return list(families)

    registry.register(Fixed())  # type: ignore[arg-type]
    parsed = text_string_to_metric_families(generate_latest(registry).decode())
    return {f.name: f.samples for f in parsed}


def test_version_names_the_build() -> None:
    result = run_cli("--version", check=True)
    first, python_line, libraries = result.stdout.splitlines()
    assert first == f"annuaire {metadata.version('annuaire')}"
    assert python_line.startswith(f"Python {platform.python_version()}, OpenSSL ")
    assert f"cryptography {metadata.version('cryptography')}" in libraries
    assert f"aiohttp {metadata.version('aiohttp')}" in libraries


def test_build_info_labels() -> None:
    (sample,) = _samples(identity.build_info_family())["annuaire_build_info"]
    assert sample.value == 1
    assert sample.labels["version"] == metadata.version("annuaire")
    assert sample.labels["python"] == platform.python_version()
    assert sample.labels["cryptography"] == metadata.version("cryptography")
    assert sample.labels["python_pkcs11"] == metadata.version("python-pkcs11")
    assert sample.labels["openssl"].startswith("OpenSSL ")


def test_the_standard_process_families() -> None:
    registry = CollectorRegistry(auto_describe=False)
    for collector in identity.standard_collectors():
        registry.register(collector)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert families["process_open_fds"].samples[0].value > 0
    assert families["python_info"].samples[0].labels["version"] == platform.python_version()


def test_certificate_expiry_for_every_ca_and_ocsp_signer(private_config: Path) -> None:
    config = load_config(private_config)
    now = time.time()
    samples = _samples(*identity.certificate_expiry(config, now))["annuaire_certificate_expiry_seconds"]
    seen = {(s.labels["issuer"], s.labels["role"]): s.value for s in samples}
    expected = {}
    for issuer in config.issuers:
        expected[(issuer.name, "ca")] = _openssl_not_after(issuer.certificate_path) - now
        if issuer.ocsp is not None and issuer.ocsp.signer_certificate_path is not None:
            expected[(issuer.name, "ocsp-signer")] = _openssl_not_after(issuer.ocsp.signer_certificate_path) - now
    assert set(seen) == set(expected)
    assert any(role == "ocsp-signer" for _, role in seen)  # the demo has delegated responders
    for key, value in expected.items():
        assert abs(seen[key] - value) < 2, (key, seen[key], value)
        assert value > 0
    # an expired certificate goes negative (evaluated a century from now)
    later = _samples(*identity.certificate_expiry(config, now + 100 * 365 * 86400))
    assert all(s.value < 0 for s in later["annuaire_certificate_expiry_seconds"])
