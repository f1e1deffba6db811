"""Hostile input against a served demo: malformed headers, ranges, dates, bodies and serials get a 4xx,
never a 500 (and every authenticated request is in the audit trail), a FIFO in the CRL folder hangs
nothing, and a request path cannot forge a log line."""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from tests.admin_client import call
from tests.conftest import run_cli
from tests.served import http, serve

FORGED = "2026-11-29 10:00:00,000 WARNING directory.admin.api: forged"


def _api_calls(demo: Path) -> list[dict]:
    records = [json.loads(line) for line in run_cli("audit", "export", "-c", str(demo), check=True).stdout.splitlines()]
    return [json.loads(r["after"]) for r in records if r["action"] == "api-call"]


def _ocsp_status(base: str, demo: Path, entry: dict, within: float) -> ocsp.OCSPCertStatus:
    cert = x509.load_pem_x509_certificate((demo.parent / "certs" / entry["file"]).read_bytes())
    issuer = x509.load_pem_x509_certificate((demo.parent / "ca" / f"{entry['issuer']}.pem").read_bytes())
    body = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build().public_bytes(Encoding.DER)
    deadline = time.monotonic() + within
    while True:
        answer = ocsp.load_der_ocsp_response(http(base + "/ocsp", "POST", body,
                                                  {"Content-Type": "application/ocsp-request"})[2])
        if answer.certificate_status == ocsp.OCSPCertStatus.REVOKED or time.monotonic() > deadline:
            return answer.certificate_status
        time.sleep(0.2)


def test_hostile_requests_get_4xx_and_fifos_hang_nothing(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANNUAIRE_LOG_FORMAT", "human")  # the format a %0A could forge a line in
    crl_dir = demo.parent / "data" / "crl"
    crl_dir.mkdir(parents=True, exist_ok=True)
    os.mkfifo(crl_dir / "before-start.crl")  # read at start-up by the CRL component
    token = (demo.parent / "secrets" / "admin-token").read_text().strip()
    manifest = json.loads((demo.parent / "certs" / "manifest.json").read_text())
    good = [m for m in manifest if m["issuer"] == "ac-personnes" and m.get("status", "good") == "good"]
    with serve(demo) as served:
        base, admin = served.base, served.admin
        os.mkfifo(crl_dir / "after-start.crl")

        # -- FIFOs in the CRL folder: refused at once, however many ask; nothing else waits
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda n: http(f"{base}/crl/{('before', 'after')[n % 2]}-start.crl")[0],
                                    range(16)))
        assert answers == [404] * 16 and time.monotonic() - started < 5
        for path in ("/metrics", "/readyz", "/healthz", "/crl/ac-personnes.crl", "/crl/ac-personnes.pem"):
            assert http(base + path)[0] == 200, path
        assert call(admin, "GET", f"/api/v1/certificates/ac-personnes/{good[0]['serial_hex']}", token=token)[0] == 200
        # and OCSP updates go on: a revocation made now is answered revoked within seconds
        victim = good[1]
        revoke = {"issuer": "ac-personnes", "serial": victim["serial_hex"], "reason": "keyCompromise"}
        assert call(admin, "POST", "/api/v1/revocations", revoke, token=token)[0] == 201
        assert _ocsp_status(base, demo, victim, within=5) == ocsp.OCSPCertStatus.REVOKED

        # -- public listener: malformed ranges and dates
        crl = http(base + "/crl/ac-personnes.crl")[2]
        digits = "9" * 5000
        for path in ("/crl/ac-personnes.crl", "/ca/ac-personnes.crt"):
            full = http(base + path)[2]
            status, headers, _ = http(base + path, headers={"Range": f"bytes={digits}-"})
            assert status == 416 and headers["Content-Range"] == f"bytes */{len(full)}", (path, status)
            status, _, body = http(base + path, headers={"Range": f"bytes=-{digits}"})
            assert status == 206 and body == full
            status, _, body = http(base + path, headers={"Range": "bytes=10-5"})  # invalid: ignored (RFC 9110)
            assert status == 200 and body == full
            status, _, body = http(base + path, headers={"Range": "bytes=\u00b2-"})
            assert status == 200 and body == full
            status, _, body = http(base + path, headers={"Range": "bytes=0-9"})
            assert status == 206 and body == full[:10]
            status, _, body = http(base + path, headers={
                "If-Modified-Since": "Sun, 06 Nov 1994 08:49:37 +99999999999999999999"})
            assert status == 200 and body == full  # not an HTTP-date: the condition is ignored
            assert http(base + path, headers={"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})[0] == 304
        assert crl

        # -- admin listener: before authentication
        before = len(_api_calls(demo))
        status, _, answer = call(admin, "GET", "/api/v1/openapi.json", token="\xff\xfe")
        assert status == 401 and answer["error"] == "unauthenticated"
        assert len(_api_calls(demo)) == before  # unauthenticated: nothing recorded, nothing done

        # -- authenticated: every one a 4xx, every one audited with its status
        target = good[0]["serial_hex"]
        attempts: list[tuple[str, str, object, int]] = [
            ("GET", "/api/v1/certificates/ac-personnes/%C2%B2", None, 422),
            ("GET", f"/api/v1/certificates/ac-personnes/{digits}", None, 422),
            ("DELETE", "/api/v1/holds/ac-personnes/%D9%A3", None, 422),  # an Arabic-Indic digit
        ]
        revocation = {"issuer": "ac-personnes", "serial": target, "reason": "keyCompromise"}
        for bad_date in ("0001-01-01T00:00:00+00:01", "0001-01-01T00:00:00Z", "2020W011T000000Z",
                         "2026-11-28T10:00:00", "2026-11-28T10:00:00Z\n"):
            attempts.append(("POST", "/api/v1/revocations", {**revocation, "invalidity_date": bad_date}, 422))
        for bad_serial in ("123\n", "\u00b2", "1 2", "0x", digits):
            attempts.append(("POST", "/api/v1/revocations", {**revocation, "serial": bad_serial}, 422))
        attempts.append(("POST", "/api/v1/revocations", b"[" * 100_000 + b"]" * 100_000, 422))
        for method, path, body, expected in attempts:
            kind = "application/json" if isinstance(body, bytes) else None
            status, _, answer = call(admin, method, path, body, token=token, content_type=kind)
            assert status == expected, (method, path[:80], str(body)[:80], status, answer)
            assert answer["error"] and answer["detail"]
        statuses = [c["status"] for c in _api_calls(demo)[before:]]
        assert statuses == [expected for *_, expected in attempts], statuses
        shown = json.loads(run_cli("show", "-c", str(demo), "--issuer", "ac-personnes", "--serial", target, "--json",
                                   check=True).stdout)
        assert shown["status"] == "good" and shown["invalidity_date"] is None  # none of them changed anything

        # -- serials over the API: hex as printed, dec: explicit, an all-digit miss names the other reading
        held = int(target, 16)
        for spelling in (target, "0x" + target.upper(), f"dec:{held}"):
            status, _, answer = call(admin, "GET", f"/api/v1/certificates/ac-personnes/{spelling}", token=token)
            assert status == 200 and answer["serial_hex"] == target, spelling
        status, _, answer = call(admin, "GET", f"/api/v1/certificates/ac-personnes/{held}", token=token)
        assert status == 404 and f"dec:{held}" in answer["detail"] and "--force" not in answer["detail"]

        # -- a request path carrying a newline (and a Unicode line separator) cannot forge a log line
        for path in ("/api/v1/x%0A" + FORGED.replace(" ", "%20"), "/api/v1/y%E2%80%A8" + FORGED.replace(" ", "%20")):
            assert call(admin, "GET", path)[0] == 401
        time.sleep(0.3)
    lines = served.output.splitlines()
    assert not [line for line in lines if line.startswith(FORGED[:20])], "a forged line got through"
    refused = [line for line in lines if "refused: no valid credentials" in line and "forged" in line]
    assert len(refused) == 2 and "\\n2026-11-29" in refused[0] and "\\u20282026-11-29" in refused[1], refused
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line) or line.startswith("  ")
               for line in lines if line.strip() and not line.startswith(("[", "@"))), lines[-20:]
