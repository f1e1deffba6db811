"""The whole service on tpm2-pkcs11 (over swtpm) instead of SoftHSM2: a demo built by `annuaire init-demo` on
the TPM token, CRLs and OCSP answers checked with openssl, RSA and EC, and hundreds of live answers signed in
parallel with max_concurrent = 2: every answer verifies, no HSM error, not one error line from the module."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509 import ocsp

from tests.conftest import run_cli
from tests.served import http, serve
from tests.test_hsm_modules import module_errors
from tests.tpm2 import Tpm2Simulator, Tpm2Token


@pytest.fixture(scope="module")
def tpm2_demo_ec(tpm2: Tpm2Simulator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`annuaire init-demo --key-type ec` on a second tpm2 token (P-256 CAs and responders)."""
    token = tpm2.add_token("annuaire-tpm2-ec")
    directory = tmp_path_factory.mktemp("tpm2demo-ec") / "demo"
    run_cli("init-demo", str(directory), "--certs", "20", "--key-type", "ec", "--pkcs11-module", token.module,
            "--token-label", token.label, "--pin-file", str(token.pin_file), env=token.env, check=True)
    return directory


@pytest.fixture(params=["rsa", "ec"])
def tpm2_config(request: pytest.FixtureRequest, tmp_path: Path, tpm2_token: Tpm2Token) -> Path:
    """A private copy of the tpm2 demo (RSA or EC) whose HSM section says max_concurrent = 2."""
    source = request.getfixturevalue("tpm2_demo" if request.param == "rsa" else "tpm2_demo_ec")
    target = tmp_path / "demo"
    shutil.copytree(source, target)
    config = target / "annuaire.toml"
    assert "max_concurrent = 2" in config.read_text() and "softhsm" not in config.read_text()
    return config


def _manifest(demo_dir: Path) -> list[dict]:
    return json.loads((demo_dir / "certs" / "manifest.json").read_text())


def _ocsp_request(demo_dir: Path, entry: dict, nonce: bytes) -> bytes:
    cert = x509.load_pem_x509_certificate((demo_dir / "certs" / entry["file"]).read_bytes())
    issuer = x509.load_pem_x509_certificate((demo_dir / "ca" / f"{entry['issuer']}.pem").read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    return builder.add_extension(x509.OCSPNonce(nonce), critical=False).build().public_bytes(
        serialization.Encoding.DER)


def _check_response(demo_dir: Path, entry: dict, body: bytes, nonce: bytes) -> None:
    """Status, nonce echoed, signature by the issuer's delegated responder (checked with cryptography)."""
    parsed = ocsp.load_der_ocsp_response(body)
    assert parsed.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, parsed.response_status
    assert parsed.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert parsed.certificate_status.name == {"good": "GOOD"}.get(entry["status"], "REVOKED")
    responder = x509.load_pem_x509_certificate((demo_dir / "ca" / f"ocsp-{entry['issuer']}.pem").read_bytes())
    key = responder.public_key()
    assert parsed.signature_hash_algorithm is not None
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(parsed.signature, parsed.tbs_response_bytes, ec.ECDSA(parsed.signature_hash_algorithm))
    else:
        key.verify(parsed.signature, parsed.tbs_response_bytes, padding.PKCS1v15(),  # type: ignore[union-attr]
                   parsed.signature_hash_algorithm)


def test_crls_and_ocsp_verify_with_openssl(tpm2_config: Path, tpm2_token: Tpm2Token) -> None:
    demo_dir = tpm2_config.parent
    check = run_cli("check-config", "-c", str(tpm2_config), env=tpm2_token.env)
    assert check.returncode == 0, check.stderr
    assert "tpm2-software.github.io TPM2.0 Cryptoki" in check.stdout and "OS locking" in check.stdout
    assert "sessions per application 1024" in check.stdout
    ca_key = x509.load_pem_x509_certificate((demo_dir / "ca" / "ac-personnes.pem").read_bytes()).public_key()
    mechanism = "CKM_ECDSA" if isinstance(ca_key, ec.EllipticCurvePublicKey) else "CKM_RSA_PKCS"
    assert "key 'ac-personnes'" in check.stdout and f"{mechanism} (digest made on the host)" in check.stdout, \
        check.stdout
    built = run_cli("crl", "build", "--config", str(tpm2_config), "--json", env=tpm2_token.env)
    assert built.returncode == 0, built.stderr
    assert module_errors(built.stderr) == [], built.stderr
    crl_dir = demo_dir / "data" / "crl"
    for name in ("ac-racine", "ac-personnes", "ac-structures"):
        out = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(crl_dir / f"{name}.crl"), "-noout",
                              "-CAfile", str(demo_dir / "ca" / "chain.pem")], capture_output=True, text=True)
        assert "verify OK" in out.stdout + out.stderr, out.stderr
    revoked = next(m for m in _manifest(demo_dir) if m["status"] == "revoked" and m["issuer"] == "ac-personnes")
    good = next(m for m in _manifest(demo_dir) if m["status"] == "good" and m["issuer"] == "ac-personnes")
    for entry, expected in ((revoked, "certificate revoked"), (good, ": OK")):
        out = subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(demo_dir / "ca" / "chain.pem"),
                              "-CRLfile", str(crl_dir / "ac-personnes.crl"), str(demo_dir / "certs" / entry["file"])],
                             capture_output=True, text=True)
        assert expected in out.stdout + out.stderr, out.stdout + out.stderr
    with serve(tpm2_config) as served:
        for entry, status in ((good, ": good"), (revoked, ": revoked")):
            out = subprocess.run(["openssl", "ocsp", "-issuer", str(demo_dir / "ca" / "ac-personnes.pem"), "-cert",
                                  str(demo_dir / "certs" / entry["file"]), "-url", served.base + "/ocsp", "-CAfile",
                                  str(demo_dir / "ca" / "chain.pem")], capture_output=True, text=True, timeout=30)
            text = out.stdout + out.stderr
            assert "Response verify OK" in text and status in text, text  # openssl sends a nonce: signed live
    assert module_errors(served.output) == [], served.output[-3000:]
    assert "key 'ocsp-ac-personnes'" in served.output and "OS locking" in served.output  # what was chosen, at start


def test_hundreds_of_parallel_live_answers_all_verify(tpm2_config: Path, tpm2_token: Tpm2Token) -> None:
    demo_dir = tpm2_config.parent
    entries = [m for m in _manifest(demo_dir) if m["issuer"] in ("ac-personnes", "ac-structures")]
    with serve(tpm2_config) as served:
        def one(n: int) -> tuple[int, dict, bytes, bytes]:
            entry = entries[n % len(entries)]
            nonce = n.to_bytes(4, "big") + os.urandom(12)
            status, _, body = http(served.base + "/ocsp", method="POST", body=_ocsp_request(demo_dir, entry, nonce),
                                   headers={"Content-Type": "application/ocsp-request"})
            assert status == 200
            return n, entry, body, nonce

        with ThreadPoolExecutor(200) as pool:
            answers = list(pool.map(one, range(200)))
        for _, entry, body, nonce in answers:
            _check_response(demo_dir, entry, body, nonce)
        metrics = http(served.base + "/metrics")[2].decode()
        errors = re.search(r"^annuaire_hsm_errors_total (\S+)$", metrics, re.M)
        signatures = re.search(r"^annuaire_hsm_signatures_total (\S+)$", metrics, re.M)
        assert errors is not None and float(errors.group(1)) == 0, metrics
        assert signatures is not None and float(signatures.group(1)) >= 200
    assert module_errors(served.output) == [], served.output[-3000:]
