"""The OCSP responder against openssl ocsp, GnuTLS ocsptool, curl-style GETs and cryptography's parser."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from tests.conftest import ROOT, run_cli
from tests.served import http, serve


def _post(url: str, body: bytes, content_type: str = "application/ocsp-request") -> tuple[int, dict, bytes]:
    return http(url, "POST", body, {"Content-Type": content_type})


def _get(url: str, method: str = "GET") -> tuple[int, dict, bytes]:
    return http(url, method)


@pytest.fixture()
def responder(demo: Path) -> Iterator[tuple[str, Path]]:
    with serve(demo) as served:
        yield served.base, demo


def _manifest(demo: Path) -> list[dict]:
    return json.loads((demo.parent / "certs" / "manifest.json").read_text())


def _pick(demo: Path, status: str, issuer: str = "ac-personnes") -> dict:
    return next(m for m in _manifest(demo) if m["status"] == status and m["issuer"] == issuer)


def _openssl(demo: Path, base: str, entry: dict, *extra: str) -> str:
    d = demo.parent
    result = subprocess.run(["openssl", "ocsp", "-issuer", str(d / "ca" / f"{entry['issuer']}.pem"), "-cert",
                             str(d / "certs" / entry["file"]), "-url", base + "/ocsp", "-CAfile",
                             str(d / "ca" / "chain.pem"), *extra], capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


@pytest.mark.parametrize("nonce", [True, False])
def test_openssl_good_revoked_unknown(responder: tuple[str, Path], nonce: bool) -> None:
    base, demo = responder
    extra = () if nonce else ("-no_nonce",)
    good = _openssl(demo, base, _pick(demo, "good"), *extra)
    assert "Response verify OK" in good and ": good" in good, good
    revoked_entry = next(m for m in _manifest(demo) if m["status"] == "revoked" and m["reason"] != "unspecified")
    revoked = _openssl(demo, base, revoked_entry, *extra)
    assert "Response verify OK" in revoked and ": revoked" in revoked, revoked
    assert f"Reason: {revoked_entry['reason']}" in revoked
    held = _openssl(demo, base, _pick(demo, "on-hold", "ac-structures"), *extra)
    assert ": revoked" in held and "Reason: certificateHold" in held
    if nonce:
        assert "WARNING: no nonce in response" not in good
    d = demo.parent
    unknown = subprocess.run(["openssl", "ocsp", "-issuer", str(d / "ca" / "ac-personnes.pem"), "-serial",
                              "0x123456789", "-url", base + "/ocsp", "-CAfile", str(d / "ca" / "chain.pem"), *extra],
                             capture_output=True, text=True, timeout=30)
    assert "Response verify OK" in unknown.stdout + unknown.stderr and ": unknown" in unknown.stdout


def test_get_mode_with_reqout_and_respin(responder: tuple[str, Path], tmp_path: Path) -> None:
    base, demo = responder
    d = demo.parent
    entry = _pick(demo, "good")
    req = tmp_path / "req.der"
    subprocess.run(["openssl", "ocsp", "-issuer", str(d / "ca" / "ac-personnes.pem"), "-cert",
                    str(d / "certs" / entry["file"]), "-no_nonce", "-reqout", str(req)], check=True,
                   capture_output=True)
    encoded = base64.b64encode(req.read_bytes()).decode()
    variants = {
        "quoted": urllib.parse.quote(encoded, safe=""),
        "raw": encoded,
        "no-padding": urllib.parse.quote(encoded.rstrip("="), safe=""),
        "double-slash": "/" + urllib.parse.quote(encoded, safe="/+"),
    }
    for name, path in variants.items():
        status, headers, body = _get(f"{base}/ocsp/{path}")
        assert status == 200, name
        out = tmp_path / f"resp-{name}.der"
        out.write_bytes(body)
        parsed = subprocess.run(["openssl", "ocsp", "-respin", str(out), "-issuer", str(d / "ca" / "ac-personnes.pem"),
                                 "-cert", str(d / "certs" / entry["file"]), "-CAfile", str(d / "ca" / "chain.pem")],
                                capture_output=True, text=True)
        assert "Response verify OK" in parsed.stdout + parsed.stderr and ": good" in parsed.stdout, (name, parsed)
        assert "public" in headers["Cache-Control"] and "must-revalidate" in headers["Cache-Control"]
        assert "max-age=" in headers["Cache-Control"] and "Expires" in headers and "Last-Modified" in headers
        assert headers["Content-Type"] == "application/ocsp-response" and headers["ETag"]
        single = ocsp.load_der_ocsp_response(body)
        max_age = int(headers["Cache-Control"].split("max-age=")[1].split(",")[0])
        assert abs(single.next_update_utc.timestamp() - time.time() - max_age) < 5


def test_gnutls_ocsptool(responder: tuple[str, Path], tmp_path: Path) -> None:
    if shutil.which("ocsptool") is None:
        pytest.fail("ocsptool (gnutls-bin) is not installed; make test installs it")
    base, demo = responder
    d = demo.parent
    for status in ("good", "revoked"):
        entry = _pick(demo, status)
        result = subprocess.run(["ocsptool", f"--ask={base}/ocsp", "--load-issuer",
                                 str(d / "ca" / "ac-personnes.pem"), "--load-cert", str(d / "certs" / entry["file"]),
                                 "--load-trust", str(d / "ca" / "chain.pem"), "--outfile", str(tmp_path / "r.der")],
                                capture_output=True, text=True, timeout=30)
        out = result.stdout + result.stderr
        assert "Verifying OCSP Response: Success" in out, out
        assert f"Certificate Status: {status}" in out, out


def _request(demo: Path, entry: dict, algorithm: hashes.HashAlgorithm | None = None,
             nonce: bytes | None = None) -> bytes:
    algorithm = algorithm or hashes.SHA1()
    d = demo.parent
    cert = x509.load_pem_x509_certificate((d / "certs" / entry["file"]).read_bytes())
    issuer = x509.load_pem_x509_certificate((d / "ca" / f"{entry['issuer']}.pem").read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_certid_hashes_and_delegated_chain(responder: tuple[str, Path], algorithm: hashes.HashAlgorithm) -> None:
    base, demo = responder
    d = demo.parent
    entry = _pick(demo, "good")
    _, _, body = _post(base + "/ocsp", _request(demo, entry, algorithm, nonce=b"n" * 16))
    parsed = ocsp.load_der_ocsp_response(body)
    assert parsed.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert parsed.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert parsed.hash_algorithm.name == algorithm.name
    assert parsed.serial_number == int(entry["serial_hex"], 16)
    assert parsed.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 16
    responder_cert = parsed.certificates[0]
    ca = x509.load_pem_x509_certificate((d / "ca" / "ac-personnes.pem").read_bytes())
    responder_cert.verify_directly_issued_by(ca)  # the delegated signer chains to the issuer
    assert x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING in responder_cert.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    assert parsed.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(
        responder_cert.public_key()).digest  # type: ignore[arg-type]
    responder_cert.public_key().verify(parsed.signature, parsed.tbs_response_bytes,  # type: ignore[call-arg]
                                       *_verify_args(parsed))


def _verify_args(parsed: ocsp.OCSPResponse) -> tuple:
    from cryptography.hazmat.primitives.asymmetric import padding

    return (padding.PKCS1v15(), parsed.signature_hash_algorithm)


def test_multiple_certids_in_one_request(responder: tuple[str, Path]) -> None:
    base, demo = responder
    d = demo.parent
    issuer = x509.load_pem_x509_certificate((d / "ca" / "ac-personnes.pem").read_bytes())
    entries = [m for m in _manifest(demo) if m["issuer"] == "ac-personnes"][:4]
    from asn1crypto import ocsp as aocsp

    requests = []
    for m in entries:
        cert = x509.load_pem_x509_certificate((d / "certs" / m["file"]).read_bytes())
        single = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
        requests.append(aocsp.OCSPRequest.load(single.public_bytes(serialization.Encoding.DER))[
            "tbs_request"]["request_list"][0])
    multi = aocsp.OCSPRequest({"tbs_request": {"request_list": requests}}).dump()
    _, _, body = _post(base + "/ocsp", multi)
    basic = aocsp.OCSPResponse.load(body)
    assert basic["response_status"].native == "successful"
    singles = basic["response_bytes"]["response"].parsed["tbs_response_data"]["responses"]
    got = {format(s["cert_id"]["serial_number"].native, "x"): s["cert_status"].name for s in singles}
    expected = {m["serial_hex"]: ("good" if m["status"] == "good" else "revoked") for m in entries}
    assert got == expected
    too_many = aocsp.OCSPRequest({"tbs_request": {"request_list": requests * 3}}).dump()  # 12 > cap of 10
    assert ocsp.load_der_ocsp_response(_post(base + "/ocsp", too_many)[2]).response_status == \
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def _status_of(body: bytes) -> ocsp.OCSPResponseStatus:
    return ocsp.load_der_ocsp_response(body).response_status


def test_bad_input_table(responder: tuple[str, Path]) -> None:
    base, demo = responder
    good_request = _request(demo, _pick(demo, "good"))
    malformed = {
        "random bytes": os.urandom(200),
        "truncated": good_request[: len(good_request) // 2],
        "empty body": b"",
        "wrong version": _with_version(good_request),
        "nonce 33 octets": _request(demo, _pick(demo, "good"), nonce=b"x" * 33),
        "a certificate instead": (demo.parent / "ca" / "ac-racine.pem").read_bytes(),
    }
    for name, body in malformed.items():
        status, headers, answer = _post(base + "/ocsp", body)
        assert status == 200 and headers["Content-Type"] == "application/ocsp-response", name
        assert _status_of(answer) == ocsp.OCSPResponseStatus.MALFORMED_REQUEST, name
    # nonce of 32 octets is fine
    assert _status_of(_post(base + "/ocsp", _request(demo, _pick(demo, "good"), nonce=b"y" * 32))[2]) == \
        ocsp.OCSPResponseStatus.SUCCESSFUL
    # wrong content type on POST
    assert _status_of(_post(base + "/ocsp", good_request, "text/plain")[2]) == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    # bad base64 on GET
    assert _status_of(_get(base + "/ocsp/!!!not-base64!!!")[2]) == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert _status_of(_get(base + "/ocsp")[2]) == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    # huge body, wrong method
    assert _post(base + "/ocsp", b"0" * (10 * 1024 + 1))[0] == 413
    assert _get(base + "/ocsp", method="PUT")[0] == 405
    assert _get(base + "/ocsp", method="DELETE")[0] == 405
    # an issuer not served here (the root has no [issuers.ocsp]; a foreign CA)
    root_entry = {"file": "../ca/ac-personnes.pem", "issuer": "ac-racine"}
    assert _status_of(_post(base + "/ocsp", _request(demo, root_entry))[2]) == ocsp.OCSPResponseStatus.UNAUTHORIZED


def _with_version(der: bytes) -> bytes:
    from asn1crypto import ocsp as aocsp

    req = aocsp.OCSPRequest.load(der)
    tbs = req["tbs_request"]
    return aocsp.OCSPRequest({"tbs_request": {"version": 5, "request_list": tbs["request_list"]}}).dump()


def test_revocation_is_visible_within_a_second(responder: tuple[str, Path]) -> None:
    base, demo = responder
    entry = _pick(demo, "good", "ac-structures")
    body = _request(demo, entry)
    assert ocsp.load_der_ocsp_response(_post(base + "/ocsp", body)[2]).certificate_status == ocsp.OCSPCertStatus.GOOD
    run_cli("revoke", "--config", str(demo), "--issuer", "ac-structures", "--serial", "0x" + entry["serial_hex"],
            "--reason", "keyCompromise", check=True)
    done = time.monotonic()
    while True:
        parsed = ocsp.load_der_ocsp_response(_post(base + "/ocsp", body)[2])
        if parsed.certificate_status == ocsp.OCSPCertStatus.REVOKED:
            break
        assert time.monotonic() - done < 1.0, "revocation not visible over OCSP within 1 s"
        time.sleep(0.02)
    assert parsed.revocation_reason == x509.ReasonFlags.key_compromise
    run_cli("release-hold", "--config", str(demo), "--issuer", "ac-structures", "--serial",
            "0x" + _pick(demo, "on-hold", "ac-structures")["serial_hex"], check=True)
    held = _request(demo, _pick(demo, "on-hold", "ac-structures"))
    deadline = time.monotonic() + 1.0
    while ocsp.load_der_ocsp_response(_post(base + "/ocsp", held)[2]).certificate_status != ocsp.OCSPCertStatus.GOOD:
        assert time.monotonic() < deadline, "released hold not visible within 1 s"
        time.sleep(0.02)


def test_newly_imported_certificate_is_answerable_at_once(responder: tuple[str, Path], tmp_path: Path) -> None:
    base, demo = responder
    new = tmp_path / "new.pem"
    subprocess.run([sys.executable, "-m", "tests.issue_cert", str(demo), "ac-personnes", str(new)], cwd=ROOT,
                   check=True, capture_output=True)
    d = demo.parent
    cert = x509.load_pem_x509_certificate(new.read_bytes())
    issuer = x509.load_pem_x509_certificate((d / "ca" / "ac-personnes.pem").read_bytes())
    body = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build().public_bytes(
        serialization.Encoding.DER)
    before = ocsp.load_der_ocsp_response(_post(base + "/ocsp", body)[2])
    assert before.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    run_cli("import", "--config", str(demo), str(new), check=True)
    after = ocsp.load_der_ocsp_response(_post(base + "/ocsp", body)[2])
    assert after.certificate_status == ocsp.OCSPCertStatus.GOOD  # no waiting for a refresh job


def test_hsm_gone_serves_cached_and_answers_try_later(responder: tuple[str, Path]) -> None:
    base, demo = responder
    d = demo.parent
    entry = _pick(demo, "good")
    cached_request = _request(demo, entry)
    deadline = time.monotonic() + 30  # pre-signing of the demo runs at start-up
    while True:
        first = _post(base + "/ocsp", cached_request)[2]
        if ocsp.load_der_ocsp_response(first).response_status == ocsp.OCSPResponseStatus.SUCCESSFUL:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(2.5)  # let the pre-signed answer be cached (and persisted)
    tokens = d / "hsm" / "tokens"
    tokens.rename(d / "hsm" / "tokens.away")
    tokens.mkdir()
    try:
        nonce_request = _request(demo, entry, nonce=b"z" * 16)
        deadline = time.monotonic() + 20
        while _status_of(_post(base + "/ocsp", nonce_request)[2]) != ocsp.OCSPResponseStatus.TRY_LATER:
            assert time.monotonic() < deadline, "live signing still answered with the token gone"
            time.sleep(0.3)
        cached = ocsp.load_der_ocsp_response(_post(base + "/ocsp", cached_request)[2])
        assert cached.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL  # valid pre-signed answer
        assert cached.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert _get(base + "/readyz")[0] == 503
    finally:
        tokens.rmdir()
        (d / "hsm" / "tokens.away").rename(tokens)
    deadline = time.monotonic() + 20
    while _status_of(_post(base + "/ocsp", _request(demo, entry, nonce=b"w" * 16))[2]) != \
            ocsp.OCSPResponseStatus.SUCCESSFUL:
        assert time.monotonic() < deadline, "did not recover after the token came back"
        time.sleep(0.3)


def test_never_issued_can_be_answered_revoked(demo: Path, tmp_path: Path) -> None:
    text = demo.read_text()
    demo.write_text(text.replace('signer_key_label = "ocsp-ac-personnes"\n',
                                 'signer_key_label = "ocsp-ac-personnes"\nunknown_status = "revoked"\n'))
    with serve(demo) as served:
        base = served.base
        d = demo.parent
        respout = tmp_path / "resp.der"
        out = subprocess.run(["openssl", "ocsp", "-issuer", str(d / "ca" / "ac-personnes.pem"), "-serial", "0xabcdef",
                              "-url", base + "/ocsp", "-CAfile", str(d / "ca" / "chain.pem"), "-respout",
                              str(respout)], capture_output=True, text=True, timeout=30)
        text_out = out.stdout + out.stderr
        assert "Response verify OK" in text_out and ": revoked" in out.stdout
        assert "Reason: certificateHold" in out.stdout
        from asn1crypto import ocsp as aocsp

        data = aocsp.OCSPResponse.load(respout.read_bytes())["response_bytes"]["response"].parsed["tbs_response_data"]
        single = data["responses"][0]
        assert single["cert_status"].chosen["revocation_time"].native.year == 1970
        assert "1.3.6.1.5.5.7.48.1.9" in {e["extn_id"].dotted for e in data["response_extensions"]}


def test_restart_reuses_persisted_responses(responder: tuple[str, Path]) -> None:
    _, demo = responder
    time.sleep(3)  # the first start pre-signs the demo and persists it (flush every 2 s)
    import sqlite3

    db = sqlite3.connect(demo.parent / "data" / "registry.sqlite3")
    stored = db.execute("SELECT COUNT(*) FROM ocsp_responses").fetchone()[0]
    certs = db.execute("SELECT COUNT(*) FROM certificates c JOIN issuers i ON i.id = c.issuer_id "
                       "WHERE i.name != 'ac-racine'").fetchone()[0]
    assert stored >= certs
    # a second instance on the same registry loads them instead of signing them again
    other = demo.with_name("second.toml")
    other.write_text(demo.read_text())
    with serve(other) as second:
        time.sleep(1)
    log_text = second.output
    import re

    loaded = int(re.search(r"OCSP: (\d+) pre-signed responses loaded", log_text).group(1))  # type: ignore[union-attr]
    assert loaded >= certs
    assert "responses pre-signed for" not in log_text  # nothing had to be signed again
