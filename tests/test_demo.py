"""The demo hierarchy: verifiable by openssl, consistent with the registry, refuses non-demo configs."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.conftest import run_cli


def _verify_all(demo: Path) -> None:
    files = sorted((demo / "certs").glob("*.pem")) + sorted((demo / "ca").glob("ocsp-*.pem"))
    result = subprocess.run(["openssl", "verify", "-CAfile", str(demo / "ca" / "chain.pem"), *map(str, files)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.count(": OK") == len(files)


def test_openssl_verifies_every_demo_certificate(demo_pristine: Path) -> None:
    _verify_all(demo_pristine)


def test_ec_demo_verifies_too(tmp_path: Path) -> None:
    run_cli("init-demo", str(tmp_path / "ec"), "--certs", "20", "--key-type", "ec", check=True)
    _verify_all(tmp_path / "ec")
    cert = x509.load_pem_x509_certificate((tmp_path / "ec" / "ca" / "ac-personnes.pem").read_bytes())
    assert cert.signature_algorithm_oid.dotted_string == "1.2.840.10045.4.3.2"  # ecdsa-with-SHA256


def test_manifest_matches_registry_and_shape(demo_pristine: Path) -> None:
    manifest = json.loads((demo_pristine / "certs" / "manifest.json").read_text())
    assert len(manifest) == 60
    db = sqlite3.connect(demo_pristine / "data" / "registry.sqlite3")
    statuses = {(r[0], r[1]): (r[2], r[3]) for r in db.execute(
        "SELECT i.name, c.serial_hex, c.status, c.reason FROM certificates c JOIN issuers i ON i.id = c.issuer_id")}
    for entry in manifest:
        assert statuses[(entry["issuer"], entry["serial_hex"])] == (entry["status"], entry["reason"])
    revoked = [m for m in manifest if m["status"] == "revoked"]
    held = [m for m in manifest if m["status"] == "on-hold"]
    assert 0.05 * len(manifest) <= len(revoked) <= 0.15 * len(manifest)
    assert len(held) == 1 and held[0]["reason"] == "certificateHold"
    assert len({m["reason"] for m in revoked}) >= 3
    assert {m["profile"] for m in manifest} == {"authentication", "signature", "encryption", "mobility",
                                               "server-tls", "server-smime", "organisation"}
    assert {m["issuer"] for m in revoked} == {"ac-personnes", "ac-structures"}


def test_certificates_carry_cdp_aia_and_professional_ids(demo_pristine: Path) -> None:
    manifest = json.loads((demo_pristine / "certs" / "manifest.json").read_text())
    person = x509.load_pem_x509_certificate((demo_pristine / "certs" / manifest[0]["file"]).read_bytes())
    cdp = person.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    urls = [n.value for point in cdp for n in point.full_name]
    assert urls[0] == "http://127.0.0.1:18080/crl/ac-personnes.crl"
    assert urls[1].startswith("ldap://127.0.0.1:13890/cn=ac-personnes,ou=AC,o=sante,c=fr?")
    aia = person.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert {d.access_location.value for d in aia} == {"http://127.0.0.1:18080/ocsp",
                                                      "http://127.0.0.1:18080/ca/ac-personnes.crt"}
    id_nat = person.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert id_nat.startswith("8") and len(id_nat) == 12 and id_nat == manifest[0]["holder"]  # "8" + RPPS
    issuing = x509.load_pem_x509_certificate((demo_pristine / "ca" / "ac-personnes.pem").read_bytes())
    root_cdp = issuing.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert root_cdp[0].full_name[0].value == "http://127.0.0.1:18080/crl/ac-racine.crl"
    ocsp = x509.load_pem_x509_certificate((demo_pristine / "ca" / "ocsp-ac-personnes.pem").read_bytes())
    assert ExtendedKeyUsageOID.OCSP_SIGNING in ocsp.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    ocsp.extensions.get_extension_for_class(x509.OCSPNoCheck)


def test_secrets_are_private_files(demo_pristine: Path) -> None:
    for rel in ("hsm/pin", "secrets/ldap-password"):
        assert (demo_pristine / rel).stat().st_mode & 0o077 == 0
    assert (demo_pristine / "hsm").stat().st_mode & 0o077 == 0
    config = (demo_pristine / "annuaire.toml").read_text()
    assert (demo_pristine / "hsm" / "pin").read_text().strip() not in config


def test_init_demo_is_idempotent_and_refuses_non_demo_configs(demo: Path, tmp_path: Path) -> None:
    again = run_cli("init-demo", str(demo.parent))
    assert again.returncode == 0 and "already initialised" in again.stderr
    demo.write_text(demo.read_text().replace("demo = true", "demo = false"))
    refused = run_cli("init-demo", str(demo.parent))
    assert refused.returncode == 1 and "not marked 'demo = true'" in refused.stderr
    other = tmp_path / "someone-elses"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    refused = run_cli("init-demo", str(other))
    assert refused.returncode == 1 and (other / "precious.txt").read_text() == "keep me"


def test_the_demo_root_is_offline(demo_pristine: Path) -> None:
    """The root's key signed the hierarchy and one ARL, then was destroyed: the token holds no key of it, the
    configuration names none, and the ARL served is the one its ceremony signed, valid for a year."""
    import os

    from directory.config import load_config

    config = load_config(demo_pristine / "annuaire.toml")
    assert config.issuer("ac-racine").offline and config.issuer("ac-personnes").key_label == "ac-personnes"
    pin = (demo_pristine / "hsm" / "pin").read_text().strip()
    objects = subprocess.run(["pkcs11-tool", "--module", config.hsm.module, "--token-label", "annuaire-demo",
                              "--login", "--pin", pin, "--list-objects"], capture_output=True, text=True,
                             env={**os.environ, "SOFTHSM2_CONF": str(demo_pristine / "hsm" / "softhsm2.conf")})
    assert "label:      ac-personnes" in objects.stdout and "ac-racine" not in objects.stdout, objects.stdout
    arl = (demo_pristine / "ca" / "ac-racine.crl").read_bytes()
    assert (demo_pristine / "data" / "crl" / "ac-racine.crl").read_bytes() == arl
    crl = x509.load_der_x509_crl(arl)
    root = x509.load_pem_x509_certificate((demo_pristine / "ca" / "ac-racine.pem").read_bytes())
    assert crl.is_signature_valid(root.public_key()) and len(crl) == 0  # type: ignore[arg-type]
    assert crl.next_update_utc is not None
    assert 364 * 86400 < (crl.next_update_utc - crl.last_update_utc).total_seconds() <= 365 * 86400
