"""OCSP pieces without a server: GET path decoding, request rules, refresh at half validity (controllable clock)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ocsp.request import Malformed, decode_get_path, parse_request
from tests.conftest import SigningResponder


def _der(demo: Path, name: str = "ac-personnes") -> bytes:
    ca = x509.load_pem_x509_certificate((demo / "ca" / f"{name}.pem").read_bytes())
    target = x509.load_pem_x509_certificate((demo / "ca" / f"ocsp-{name}.pem").read_bytes())
    return ocsp.OCSPRequestBuilder().add_certificate(target, ca, hashes.SHA1()).build().public_bytes(
        serialization.Encoding.DER)


def test_get_path_spellings(demo_token: Path) -> None:
    der = _der(demo_token)
    b64 = base64.b64encode(der).decode()
    spellings = [b64, quote(b64, safe=""), quote(b64, safe="/+="), b64.rstrip("="), "/" + b64, "//" + b64,
                 quote(b64, safe="").replace("%2F", "%2f"), b64.replace("+", "%2B"), b64.replace("/", "%2F")]
    for spelling in spellings:
        assert decode_get_path(spelling) == der, spelling
    for bad in ("", "/", "!!!", "%ZZ"):
        with pytest.raises(Malformed):
            parse_request(decode_get_path(bad))
    for length in (1, 5, 401):
        with pytest.raises(Malformed, match="not base64"):  # 4k+1 characters are no base64 at all
            decode_get_path("M" * length)


def test_request_rules(demo_token: Path) -> None:
    der = _der(demo_token)
    request = parse_request(der)
    assert len(request.cert_ids) == 1 and request.nonce is None
    with pytest.raises(Malformed, match="more than 0 CertIDs"):
        parse_request(der, max_cert_ids=0)
    with pytest.raises(Malformed):
        parse_request(der + b"\x00")
    with pytest.raises(Malformed):
        parse_request(b"\x30\x80\x00\x00")  # indefinite length is not DER


def test_signed_requests_are_accepted(demo_token: Path, tmp_path: Path) -> None:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=requestor"], check=True, capture_output=True)
    out = tmp_path / "req.der"
    subprocess.run(["openssl", "ocsp", "-issuer", str(demo_token / "ca" / "ac-personnes.pem"), "-cert",
                    str(demo_token / "ca" / "ocsp-ac-personnes.pem"), "-signer", str(cert), "-signkey", str(key),
                    "-reqout", str(out)], check=True, capture_output=True)
    request = parse_request(out.read_bytes())
    assert len(request.cert_ids) == 1 and request.nonce is not None  # openssl adds a nonce by default


def test_presigned_responses_are_renewed_at_half_validity(signing_responder: SigningResponder) -> None:
    config, clock, responder = signing_responder.config, signing_responder.clock, signing_responder.responder
    ocsp_cert = signing_responder.cert
    serial_hex = format(ocsp_cert.serial_number, "x")
    assert responder.missing("ac-personnes") == [serial_hex]
    assert responder.presign("ac-personnes", serial_hex)
    responder.flush()
    first = responder.presigned_window("ac-personnes", ocsp_cert.serial_number)
    validity = config.issuer("ac-personnes").ocsp.validity  # type: ignore[union-attr]
    assert responder.due_for_refresh("ac-personnes") == []
    clock.now += validity // 2 + 5
    assert responder.due_for_refresh("ac-personnes") == [(serial_hex, "sha1")]
    assert responder.presign("ac-personnes", serial_hex)
    responder.flush()
    second = responder.presigned_window("ac-personnes", ocsp_cert.serial_number)
    assert first is not None and second is not None
    assert second[0] > first[0] and second[1] > first[1]
    assert responder.due_for_refresh("ac-personnes") == []
    # a change invalidates first; a signature that started before it is not cached
    responder.invalidate("ac-personnes", serial_hex)
    assert responder.presigned_window("ac-personnes", ocsp_cert.serial_number) is None
