"""CRL publication in the service: HTTP caching rules, freshness with a controllable clock, expiry rules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path

import pytest
from cryptography import x509

from directory.certinfo import CertificateInfo
from directory.config import load_config
from directory.crl.builder import CrlPublisher, opened
from directory.crl.service import CrlComponent, publishers_for
from directory.runtime import open_config_registry, open_hsm
from tests.conftest import Clock, run_cli
from tests.served import http, serve


def _request(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    return http(url, method, headers=headers)


@pytest.fixture()
def service(demo: Path) -> Iterator[tuple[str, Path]]:
    with serve(demo) as served:
        yield served.base, demo


def test_http_caching_rules(service: tuple[str, Path]) -> None:
    base, _ = service
    status, headers, body = _request(base + "/crl/ac-personnes.crl")
    assert status == 200 and headers["Content-Type"] == "application/pkix-crl"
    crl = x509.load_der_x509_crl(body)
    assert parsedate_to_datetime(headers["Last-Modified"]) == crl.last_update_utc
    assert parsedate_to_datetime(headers["Expires"]) == crl.next_update_utc
    max_age = int(headers["Cache-Control"].split("max-age=")[1].split(",")[0])
    assert "public" in headers["Cache-Control"]
    assert 0 < max_age <= (crl.next_update_utc.timestamp() - time.time()) + 1
    etag = headers["ETag"]
    assert _request(base + "/crl/ac-personnes.crl", {"If-None-Match": etag})[0] == 304
    assert _request(base + "/crl/ac-personnes.crl", {"If-None-Match": '"other", ' + etag})[0] == 304
    assert _request(base + "/crl/ac-personnes.crl", {"If-None-Match": '"other"'})[0] == 200
    ims = format_datetime(crl.last_update_utc, usegmt=True)
    assert _request(base + "/crl/ac-personnes.crl", {"If-Modified-Since": ims})[0] == 304
    older = format_datetime(crl.last_update_utc.replace(year=2020), usegmt=True)
    assert _request(base + "/crl/ac-personnes.crl", {"If-Modified-Since": older})[0] == 200
    status, headers, head_body = _request(base + "/crl/ac-personnes.crl", method="HEAD")
    assert status == 200 and head_body == b"" and int(headers["Content-Length"]) == len(body)
    status, headers, part = _request(base + "/crl/ac-personnes.crl", {"Range": "bytes=10-19"})
    assert status == 206 and part == body[10:20] and headers["Content-Range"] == f"bytes 10-19/{len(body)}"
    status, _, tail = _request(base + "/crl/ac-personnes.crl", {"Range": "bytes=-5"})
    assert status == 206 and tail == body[-5:]
    assert _request(base + "/crl/ac-personnes.crl", {"Range": f"bytes={len(body)}-"})[0] == 416
    status, _, pem = _request(base + "/crl/ac-personnes.pem")
    assert status == 200 and pem.startswith(b"-----BEGIN X509 CRL-----")
    assert x509.load_pem_x509_crl(pem).fingerprint(crl.signature_hash_algorithm) == crl.fingerprint(  # type: ignore
        crl.signature_hash_algorithm)  # type: ignore[arg-type]
    status, headers, der = _request(base + "/ca/ac-racine.crt")
    assert status == 200 and headers["Content-Type"] == "application/pkix-cert"
    assert x509.load_der_x509_certificate(der).subject.rfc4514_string().startswith("CN=AC RACINE SANTE DEMO")


@pytest.mark.parametrize("path", [
    "/crl/nope.crl", "/crl/ac-personnes.txt", "/crl/..%2f..%2fetc%2fpasswd", "/crl/..%2F..%2Fetc%2Fpasswd",
    "/crl/%2e%2e/annuaire.toml", "/crl/.ac-personnes.lock", "/crl/archive/ac-personnes-1.crl",
    "/crl/ac-personnes.crl%00.pem", "/ca/../annuaire.toml", "/ca/nope.crt", "/ca/ac-racine.pem",
])
def test_unknown_names_and_traversal_are_404(service: tuple[str, Path], path: str) -> None:
    base, _ = service
    status, _, body = _request(base + path)
    assert status == 404, (path, status)
    assert b"demo = true" not in body and b"root:" not in body


def test_revocation_reaches_the_served_crl_within_the_delay(service: tuple[str, Path]) -> None:
    base, demo = service
    import json

    manifest = json.loads((demo.parent / "certs" / "manifest.json").read_text())
    good = next(m for m in manifest if m["issuer"] == "ac-structures" and m["status"] == "good")
    started = time.monotonic()
    run_cli("revoke", "--config", str(demo), "--issuer", "ac-structures", "--serial", "0x" + good["serial_hex"],
            "--reason", "keyCompromise", check=True)
    serial = int(good["serial_hex"], 16)
    while True:
        crl = x509.load_der_x509_crl(_request(base + "/crl/ac-structures.crl")[2])
        if crl.get_revoked_certificate_by_serial_number(serial) is not None:
            break
        assert time.monotonic() - started < 5 + 5, "revocation not in the served CRL within on_revocation_delay"
        time.sleep(0.2)


def test_idle_issuer_is_renewed_before_next_update(private_config: Path) -> None:
    """Nothing is revoked, time passes (controllable clock): the CRL is rebuilt before it expires."""
    config = load_config(private_config)
    clock = Clock(time.time())
    registry = open_config_registry(config)
    registry.clock = clock
    hsm = open_hsm(config)
    try:
        component = CrlComponent(clock)
        component.registry = registry
        component.publishers = publishers_for(config, opened(hsm), registry, clock)
        publisher = component.publishers["ac-structures"]
        first = publisher.publish_all()[0]
        settings = publisher.settings
        assert not component.due("ac-structures")
        clock.now = first.next_update - settings.overlap - 1
        assert not component.due("ac-structures")
        clock.now = first.next_update - settings.overlap + 1
        assert component.due("ac-structures")
        second = publisher.publish_all()[0]
        assert second.record.number == first.record.number + 1
        assert second.this_update == int(clock.now) and second.next_update > first.next_update
        # the clock jumps backwards: a CRL "from the future" is replaced by one that is not
        clock.now = first.this_update - 7200
        assert component.due("ac-structures")
        third = publisher.publish_all()[0]
        assert third.this_update <= clock.now < third.next_update
        assert third.record.number > second.record.number
        # the watchdog acts on it by itself
        clock.now = third.next_update - settings.overlap + 5
        component._locks = {name: asyncio.Lock() for name in component.publishers}
        from directory.crl.http import CrlFiles
        component.files = CrlFiles(publisher.dir, 3600, clock)

        async def run() -> None:
            await component.watchdog()

        asyncio.run(run())
        assert registry.crl_latest("ac-structures").number > third.record.number  # type: ignore[union-attr]
    finally:
        hsm.close()


def _fake(serial: int, not_after: int) -> CertificateInfo:
    return CertificateInfo(serial, format(serial, "x"), f"CN=expired {serial}", (), (), None,
                           not_after - 86400 * 365, not_after, b"\x30\x00" + serial.to_bytes(8, "big"),
                           f"{serial:064x}", "authentication")


@pytest.mark.parametrize("keep_expired", [False, True])
def test_expired_revoked_certificates(private_config: Path, keep_expired: bool) -> None:
    if keep_expired:
        text = private_config.read_text()
        private_config.write_text(text.replace("delta = true", "delta = true\nkeep_expired = true", 1))
    config = load_config(private_config)
    assert config.issuer("ac-personnes").crl.keep_expired is keep_expired
    registry = open_config_registry(config)
    now = int(time.time())
    registry.import_certificates("ac-personnes", [_fake(1001, now - 86400), _fake(1002, now + 86400)])
    registry.revoke("ac-personnes", format(1001, "x"), "superseded", at=now - 86400 * 2)
    registry.revoke("ac-personnes", format(1002, "x"), "superseded")
    hsm = open_hsm(config)
    try:
        publisher: CrlPublisher = publishers_for(config, opened(hsm), registry)["ac-personnes"]
        crl_path = publisher.publish(publisher.full_targets()[0]).path
    finally:
        hsm.close()
    crl = x509.load_der_x509_crl(crl_path.read_bytes())
    serials = {r.serial_number for r in crl}
    assert 1002 in serials
    assert (1001 in serials) is keep_expired
    oids = {e.oid.dotted_string for e in crl.extensions}
    assert ("2.5.29.60" in oids) is keep_expired


def test_with_deltas_a_revocation_reaches_the_full_crl_within_the_delay(service: tuple[str, Path],
                                                                        tmp_path: Path) -> None:
    """Deltas on (ac-personnes): a keyCompromise is in the FULL CRL the certificates' CDP names within
    on_revocation_delay, as `openssl verify -crl_check` without -use_deltas sees it; one rebuild, not one per
    poll; the delta built with it keeps the base clients hold and lists the revocation too."""
    base, demo = service
    import json
    import subprocess

    manifest = json.loads((demo.parent / "certs" / "manifest.json").read_text())
    good = next(m for m in manifest if m["issuer"] == "ac-personnes" and m["status"] == "good")
    cert_file = demo.parent / "certs" / good["file"]
    chain = demo.parent / "ca" / "chain.pem"

    def verify() -> str:
        crl_file = tmp_path / "full.crl"
        crl_file.write_bytes(_request(base + "/crl/ac-personnes.crl")[2])
        out = subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(chain), "-CRLfile", str(crl_file),
                              str(cert_file)], capture_output=True, text=True)
        return out.stdout + out.stderr

    assert f"{cert_file}: OK" in verify()
    before = x509.load_der_x509_crl(_request(base + "/crl/ac-personnes-delta.crl")[2])
    base_before = before.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number
    started = time.monotonic()
    run_cli("revoke", "--config", str(demo), "--issuer", "ac-personnes", "--serial", good["serial_hex"],
            "--reason", "keyCompromise", check=True)
    serial = int(good["serial_hex"], 16)
    while "certificate revoked" not in (out := verify()):
        assert time.monotonic() - started < 5 + 5, f"not in the full CRL within on_revocation_delay: {out}"
        time.sleep(0.2)
    full = x509.load_der_x509_crl(_request(base + "/crl/ac-personnes.crl")[2])
    number = full.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    delta = x509.load_der_x509_crl(_request(base + "/crl/ac-personnes-delta.crl")[2])
    assert delta.get_revoked_certificate_by_serial_number(serial) is not None
    assert delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number == base_before
    assert delta.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > number
    time.sleep(6)  # three polls of the change log (every on_revocation_delay / 2 = 2 s): nothing new to list
    again = x509.load_der_x509_crl(_request(base + "/crl/ac-personnes.crl")[2])
    assert again.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number
