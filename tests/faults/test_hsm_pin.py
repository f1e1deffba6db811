"""The HSM's user PIN changed on the token but not (yet) in the service's PIN file, then corrected: while
the PIN is refused, published CRLs and pre-signed OCSP answers are still served, live answers are
`tryLater`, /readyz says why, the refused PIN is never tried twice; once the file is corrected the
service resumes by itself, without a restart, and logs that the HSM is back. (Token removed:
tests/test_service.py and tests/test_ocsp.py.)"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.parse
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from directory.hsm.softhsm import find_module
from tests.served import http, serve

NEW_PIN = "24681357"


def _request(demo_dir: Path, entry: dict, nonce: bytes | None = None) -> bytes:
    cert = x509.load_pem_x509_certificate((demo_dir / "certs" / entry["file"]).read_bytes())
    issuer = x509.load_pem_x509_certificate((demo_dir / "ca" / f"{entry['issuer']}.pem").read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _ocsp(base: str, der: bytes, get: bool) -> ocsp.OCSPResponse:
    if get:
        path = urllib.parse.quote(base64.b64encode(der).decode(), safe="")
        status, _, body = http(f"{base}/ocsp/{path}")
    else:
        status, _, body = http(f"{base}/ocsp", method="POST", body=der,
                               headers={"Content-Type": "application/ocsp-request"})
    assert status == 200
    return ocsp.load_der_ocsp_response(body)


def test_pin_changed_on_the_token_then_corrected_in_the_file(demo: Path) -> None:
    demo_dir = demo.parent
    manifest = json.loads((demo_dir / "certs" / "manifest.json").read_text())
    entry = next(m for m in manifest if m["issuer"] == "ac-personnes" and m.get("status", "good") == "good")
    with serve(demo) as served:  # a first run pre-signs and persists its answers
        deadline = time.monotonic() + 30
        while _ocsp(served.base, _request(demo_dir, entry), get=True).response_status.name != "SUCCESSFUL":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(3)  # persisted (flushed every 2 s)
    old_pin = (demo_dir / "hsm" / "pin").read_text().strip()
    env = {**os.environ, "SOFTHSM2_CONF": str(demo_dir / "hsm" / "softhsm2.conf")}
    subprocess.run(["pkcs11-tool", "--module", find_module(), "--token-label", "annuaire-demo", "--login",
                    "--pin", old_pin, "--change-pin", "--new-pin", NEW_PIN], env=env, check=True,
                   capture_output=True)

    with serve(demo, ready=False) as served:
        status, _, body = http(served.base + "/readyz")
        assert status == 503 and "PIN refused" in json.loads(body)["problems"]["hsm"], body
        assert http(served.base + "/crl/ac-personnes.crl")[0] == 200  # what was published stays served
        presigned = _ocsp(served.base, _request(demo_dir, entry), get=True)
        assert presigned.response_status.name == "SUCCESSFUL"
        assert presigned.certificate_status.name == "GOOD"
        live = _ocsp(served.base, _request(demo_dir, entry, nonce=b"n" * 16), get=False)
        assert live.response_status.name == "TRY_LATER"
        for _ in range(3):  # asked again and again, the refused PIN is not tried again
            assert "not trying the same PIN again" in json.loads(http(served.base + "/readyz")[2])["problems"]["hsm"]
        metrics = http(served.base + "/metrics")[2].decode()
        errors = next(line for line in metrics.splitlines() if line.startswith("annuaire_hsm_errors_total"))
        assert float(errors.split()[-1]) >= 1
        # the operator puts the new PIN in the file: the service resumes by itself
        (demo_dir / "hsm" / "pin").write_text(NEW_PIN + "\n")
        deadline = time.monotonic() + 10
        while http(served.base + "/readyz")[0] != 200:
            assert time.monotonic() < deadline, http(served.base + "/readyz")[2]
            time.sleep(0.2)
        live = _ocsp(served.base, _request(demo_dir, entry, nonce=b"m" * 16), get=False)
        assert live.response_status.name == "SUCCESSFUL" and live.certificate_status.name == "GOOD"
    assert old_pin not in served.output and NEW_PIN not in served.output
    assert served.output.count("refused the user PIN") == 1  # logged once: the wrong PIN was tried once
    # the outage is logged once when it begins and once when it ends
    assert served.output.count("HSM: token 'annuaire-demo' cannot be used") == 1, served.output[-3000:]
    assert served.output.count("HSM: token 'annuaire-demo' is available again after") == 1
