"""`annuaire check-config` says what the service would hit, on a real SoftHSM2 token: a wrong PIN (from a
file or from the environment), a wrong key label, a wrong token label (each listing what is there), a key
that does not match its certificate, issuer and OCSP responder certificates without the usages relying
parties need, expired or expiring certificates. Exit 0 OK (warnings allowed), 1 a problem, 2 configuration
error; ``--json`` says the same."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID

from directory.demo import issuance
from directory.hsm.signer import HsmSettings, HsmSigner
from directory.hsm.softhsm import find_module
from tests.conftest import run_cli
from tests.served import http, serve


def _check(config: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
    result = run_cli("check-config", "-c", str(config), "--json", *flags, env=env)
    return result.returncode, json.loads(result.stdout), result.stderr


def _problems(report: dict) -> dict[str, str]:
    return {p["where"]: p["text"] for p in report["problems"]}


def test_what_the_service_would_hit_in_the_token(demo: Path) -> None:
    original = demo.read_text()
    pin_file = demo.parent / "hsm" / "pin"
    pin = pin_file.read_text().strip()
    code, report, _ = _check(demo)
    assert code == 0 and report["ok"] and report["problems"] == [], report

    # a wrong PIN in its file: refused by the token, said with where it comes from (read again by the service)
    pin_file.write_text("00000000\n")
    code, report, _ = _check(demo)
    text = _problems(report)["hsm"]
    assert code == 1 and "PIN refused by token 'annuaire-demo'" in text and f"file {pin_file}" in text, report
    assert "read again" in text and "00000000" not in json.dumps(report)
    human = run_cli("check-config", "-c", str(demo))
    assert human.returncode == 1 and ": NOT OK, 1 problem" in human.stdout
    assert "PROBLEM: hsm: PIN refused" in human.stdout
    pin_file.write_text(pin + "\n")

    # the same from an environment variable: a running service would need a restart to see it corrected
    demo.write_text(original.replace('pin_file = "hsm/pin"', 'pin_env = "TEST_HSM_PIN"'))
    code, report, _ = _check(demo, env={"TEST_HSM_PIN": "11111111"})
    text = _problems(report)["hsm"]
    assert code == 1 and "environment variable TEST_HSM_PIN" in text and "restart" in text, report
    assert _check(demo, env={"TEST_HSM_PIN": pin})[0] == 0

    # a key label that is not on the token: named, with the labels the token does hold
    demo.write_text(original.replace('key_label = "ac-structures"', 'key_label = "ac-structure"'))
    code, report, stderr = _check(demo)
    text = _problems(report)["issuers[ac-structures].key_label"]
    assert code == 1 and "no private key labelled 'ac-structure'" in text, report
    # the demo's root is offline (its key destroyed once its ARL was signed): not on the token
    assert "holds private keys 'ac-personnes', 'ac-structures', 'ocsp-ac-personnes', 'ocsp-ac-structures'" in text
    assert "ac-structure'" in stderr

    # a token label the module does not have: the tokens it has are named
    demo.write_text(original.replace('token_label = "annuaire-demo"', 'token_label = "annuaire-prod"'))
    code, report, _ = _check(demo)
    text = _problems(report)["hsm"]
    assert code == 1 and "token 'annuaire-prod' not found" in text and "holds tokens 'annuaire-demo'" in text, report

    # a key that does not match its certificate: the test signature does not verify
    demo.write_text(original.replace('key_label = "ac-structures"', 'key_label = "ac-personnes"'))
    code, report, _ = _check(demo)
    text = _problems(report)["issuers[ac-structures].key_label"]
    expected = "signature does not verify under the public key of CN=AC SANTE DEMO ORGANISATIONS"
    assert code == 1 and expected in text, report
    assert "issuers[ac-personnes].key_label" not in _problems(report)  # the same label is right for its own CA

    # offline: the HSM is not opened at all, so none of that is seen
    code, report, _ = _check(demo, "--offline")
    assert code == 0 and report["hsm"] is None, report


@pytest.fixture()
def reissued(demo: Path, demo_token: Path) -> Iterator[dict[str, Path]]:
    """Certificates signed with the demo CAs' keys (the pristine token: the clone holds the same keys) for the
    shapes the demo never issues: a responder without nocheck or without the OCSP EKU, a CA without cRLSign,
    certificates expiring soon or expired."""
    hsm = HsmSigner(HsmSettings(find_module(), "annuaire-demo", (demo_token / "hsm" / "pin").read_text().strip(), 2,
                                softhsm2_conf=str(demo_token / "hsm" / "softhsm2.conf")))
    ca_dir = demo.parent / "ca"

    def load(name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((ca_dir / f"{name}.pem").read_bytes())

    def authority(name: str) -> issuance.CertificateAuthority:
        cert = load(name)
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return issuance.CertificateAuthority(name, cert.subject, hsm.key(name, cert), spki, cert)

    now = issuance.utcnow()
    made: dict[str, Path] = {}

    def write(name: str, parent: str, like: str, extensions: list, not_after: timedelta) -> None:
        cert = load(like)
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        new = issuance.issue(authority(parent), cert.subject, spki, now - issuance.days(30), now + not_after,
                             extensions)
        made[name] = ca_dir / f"{name}.pem"
        made[name].write_bytes(issuance.pem(new))

    personnes = authority("ac-personnes")
    responder = load("ocsp-ac-personnes").public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    usual = issuance.end_entity_extensions(personnes, responder, "ocsp-signing", [], [], [], None, None)
    without_nocheck = [(e, c) for e, c in usual if not isinstance(e, x509.OCSPNoCheck)]
    client_eku = [(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
                  if isinstance(e, x509.ExtendedKeyUsage) else (e, c) for e, c in usual]
    write("ocsp-no-nocheck", "ac-personnes", "ocsp-ac-personnes", without_nocheck, issuance.days(300))
    write("ocsp-no-eku", "ac-personnes", "ocsp-ac-personnes", client_eku, issuance.days(300))
    write("ocsp-expired", "ac-personnes", "ocsp-ac-personnes", usual, -issuance.days(1))
    # The demo's root is offline (its key was destroyed once its ARL was signed): a stand-in key signs these
    # variants of the intermediate under the root's name. check-config judges a CA certificate's own usages and
    # dates, not its parent's signature.
    root = load("ac-racine")
    root_spki = root.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    root_ca = issuance.CertificateAuthority("ac-racine", root.subject, None, root_spki, root)  # type: ignore[arg-type]
    stand_in = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    structures = load("ac-structures")
    ca_usual = issuance.ca_extensions(structures.public_key().public_bytes(Encoding.DER,
                                                                           PublicFormat.SubjectPublicKeyInfo),
                                      root_ca, 0, [], None)
    no_crl_sign = [(x509.KeyUsage(False, False, False, False, False, True, False, False, False), True)
                   if isinstance(e, x509.KeyUsage) else (e, c) for e, c in ca_usual]

    def write_ca(name: str, extensions: list, not_after: timedelta) -> None:
        builder = (x509.CertificateBuilder().subject_name(structures.subject).issuer_name(root.subject)
                   .public_key(structures.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - issuance.days(30)).not_valid_after(now + not_after))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical)
        made[name] = ca_dir / f"{name}.pem"
        made[name].write_bytes(issuance.pem(builder.sign(stand_in, hashes.SHA256())))

    write_ca("ac-structures-expiring", ca_usual, issuance.days(10))
    write_ca("ac-structures-no-crlsign", no_crl_sign, issuance.days(300))
    hsm.close()
    yield made


def test_certificates_the_service_and_relying_parties_need(demo: Path, reissued: dict[str, Path]) -> None:
    original = demo.read_text()

    def using(old: str, new: str) -> None:
        assert old in original
        demo.write_text(original.replace(old, new))

    # an OCSP responder without id-pkix-ocsp-nocheck: a problem, found offline too (no HSM needed)
    using("ca/ocsp-ac-personnes.pem", "ca/ocsp-no-nocheck.pem")
    for flags in ((), ("--offline",)):
        code, report, _ = _check(demo, *flags)
        text = _problems(report)["issuers[ac-personnes].ocsp.signer_certificate"]
        assert code == 1 and "no id-pkix-ocsp-nocheck extension" in text, report
    # without id-kp-OCSPSigning it is not a responder at all: the configuration is refused (exit 2)
    using("ca/ocsp-ac-personnes.pem", "ca/ocsp-no-eku.pem")
    code, report, stderr = _check(demo)
    assert code == 2 and "lacks extendedKeyUsage id-kp-OCSPSigning" in report["config_error"] and not report["ok"]
    assert "configuration error" in stderr
    # an expired responder certificate: a problem (its key still matches: the HSM part says nothing)
    using("ca/ocsp-ac-personnes.pem", "ca/ocsp-expired.pem")
    code, report, _ = _check(demo)
    assert code == 1 and _problems(report)["issuers[ac-personnes].ocsp.signer_certificate"].startswith("expired on")
    assert len(report["problems"]) == 1, report
    # a CA certificate without cRLSign: relying parties would refuse its CRLs
    using('certificate = "ca/ac-structures.pem"', 'certificate = "ca/ac-structures-no-crlsign.pem"')
    code, report, _ = _check(demo)
    assert code == 1 and "keyUsage lacks cRLSign" in _problems(report)["issuers[ac-structures].certificate"]
    # a CA certificate expiring in 10 days: a warning, still OK (openssl agrees it expires within 30 days)
    using('certificate = "ca/ac-structures.pem"', 'certificate = "ca/ac-structures-expiring.pem"')
    code, report, _ = _check(demo)
    assert code == 0 and report["ok"], report
    warning = next(w for w in report["warnings"] if w["where"] == "issuers[ac-structures].certificate")
    assert warning["text"].startswith(("expires in 9 days", "expires in 10 days")), warning
    checkend = subprocess.run(["openssl", "x509", "-checkend", str(30 * 86400), "-noout", "-in",
                               str(reissued["ac-structures-expiring"])], capture_output=True, text=True)
    assert checkend.returncode == 1 and "will expire" in checkend.stdout
    human = run_cli("check-config", "-c", str(demo))
    assert human.returncode == 0 and ": OK (3 issuers)" in human.stdout
    assert "WARNING: issuers[ac-structures].certificate: expires in" in human.stdout


def test_a_wrong_pin_from_the_environment_asks_for_a_restart(demo: Path) -> None:
    """Under a running service, a PIN from pin_env that the token refused is never tried again, and /readyz
    says the truth: correcting the variable takes a restart (a process never sees its environment change)."""
    demo.write_text(demo.read_text().replace('pin_file = "hsm/pin"', 'pin_env = "TEST_HSM_PIN"'))
    with serve(demo, ready=False, env={"TEST_HSM_PIN": "22222222"}) as served:
        first = json.loads(http(served.base + "/readyz")[2])["problems"]["hsm"]
        again = json.loads(http(served.base + "/readyz")[2])["problems"]["hsm"]
        for text in (first, again):
            assert "environment variable TEST_HSM_PIN" in text and "restart the service" in text, text
        assert "not trying the same PIN again" in again
    assert served.output.count("refused the user PIN") == 1
    assert "cannot be used: PIN refused" in served.output  # the outage, logged once when it began
