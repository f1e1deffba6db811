"""Offline issuers and CRLs signed elsewhere: `annuaire crl publish`, the admin route, the expiry warning,
and CRL numbers that continue a previous system's (`number_floor`)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from directory.config import ConfigError, load_config
from directory.crl.publish import CrlRefused, publish_crl
from directory.publication import crl_dir
from directory.runtime import open_config_registry
from tests.admin_client import call
from tests.conftest import run_cli
from tests.served import http, serve

NOW = datetime.now(UTC).replace(microsecond=0)


def _root(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A root kept offline: its key is here only because the test plays the key ceremony."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"AC RACINE {name.upper()}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _arl(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, number: int | None, *, days: float = 60,
         this_update: datetime | None = None, issuer: x509.Name | None = None, delta: bool = False,
         idp: str | None = None, revoked: int | None = None, extra: x509.ExtensionType | None = None) -> bytes:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer or cert.subject)
               .last_update(this_update or NOW - timedelta(hours=1)).next_update(NOW + timedelta(days=days)))
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    if delta:
        builder = builder.add_extension(x509.DeltaCRLIndicator(1), critical=True)
    if idp is not None:
        builder = builder.add_extension(x509.IssuingDistributionPoint(
            [x509.UniformResourceIdentifier(idp)], None, False, False, None, False, False), critical=True)
    if extra is not None:
        builder = builder.add_extension(extra, critical=True)
    if revoked is not None:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(revoked).revocation_date(NOW - timedelta(days=2))
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False).build())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _add_root(config: Path, name: str, cert: x509.Certificate, crl_table: str = "") -> None:
    path = config.parent / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with open(config, "a") as fh:
        fh.write(f'\n[[issuers]]\nname = "{name}"\ncertificate = "{path}"\n' + (f"\n[issuers.crl]\n{crl_table}"
                                                                                   if crl_table else ""))


def test_publish_checks_every_crl_and_installs_like_a_built_one(private_config: Path) -> None:
    key, cert = _root("racine-test")
    other_key, other = _root("autre")
    _add_root(private_config, "racine-test", cert)
    _add_root(private_config, "racine-idp", other, "issuing_distribution_point = true\n")
    config = load_config(private_config)
    registry = open_config_registry(config)
    issuer = config.issuer("racine-test")
    folder = crl_dir(config)

    def publish(data: bytes, name: str = "racine-test"):  # type: ignore[no-untyped-def]
        return publish_crl(config.issuer(name), registry, folder, config.http.base_url, data, "test:ceremony")

    first = publish(_arl(key, cert, 5, revoked=0x1001))
    served = (folder / "racine-test.crl").read_bytes()
    assert first.record.number == 5 and first.entries == 1
    assert served == (folder / "archive" / "racine-test-5.crl").read_bytes()
    assert registry.crl_latest("racine-test").number == 5  # type: ignore[union-attr]
    out = subprocess.run(["openssl", "crl", "-inform", "DER", "-noout", "-text", "-in",
                          str(folder / "racine-test.crl")], capture_output=True, text=True, check=True).stdout
    assert "Serial Number: 1001" in out and "Key Compromise" in out
    db = sqlite3.connect(config.data_dir / "registry.sqlite3")
    actor, action = db.execute("SELECT actor, action FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    assert (actor, action) == ("test:ceremony", "crl-published-full")
    assert db.execute("SELECT COUNT(*) FROM ldap_outbox o JOIN issuers i ON i.id = o.issuer_id "
                      "WHERE i.name = 'racine-test' AND o.certificate_id IS NULL").fetchone()[0] >= 1

    refusals = {
        "not greater than 5": _arl(key, cert, 5),
        "not greater than 5, ": _arl(key, cert, 4),
        "signature does not verify": _arl(other_key, cert, 9),
        "issued by": _arl(key, cert, 9, issuer=other.subject),
        "expired": _arl(key, cert, 9, days=-1, this_update=NOW - timedelta(days=3)),
        "thisUpdate is in the future": _arl(key, cert, 9, this_update=NOW + timedelta(hours=2)),
        "no cRLNumber": _arl(key, cert, None),
        "a delta CRL": _arl(key, cert, 9, delta=True),
        "unknown critical extension 1.2.3.4": _arl(key, cert, 9, extra=x509.UnrecognizedExtension(
            x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00")),
        "a partial CRL": _arl(key, cert, 9, extra=x509.IssuingDistributionPoint(None, None, False, False, None,
                                                                                True, False)),
        "neither a DER CRL": b"not a CRL at all",
        "not a DER X.509 CRL": b"\x30\x03\x02\x01\x01",
    }
    for why, data in refusals.items():
        with pytest.raises(CrlRefused, match=why.rstrip(", ")) as refused:
            publish(data)
        assert refused.value.conflict == why.startswith("not greater")
        assert (folder / "racine-test.crl").read_bytes() == served  # nothing changed
        assert registry.crl_latest("racine-test").number == 5  # type: ignore[union-attr]
    assert sorted(p.name for p in (folder / "archive").iterdir() if p.name.startswith("racine-test")) == \
        ["racine-test-5.crl"]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]

    pem = x509.load_der_x509_crl(_arl(key, cert, 6)).public_bytes(serialization.Encoding.PEM)
    assert publish(pem).record.number == 6

    # with issuing_distribution_point = true, the IDP must name the URL it is served at
    with pytest.raises(CrlRefused, match="issuingDistributionPoint must name"):
        publish(_arl(other_key, other, 1), "racine-idp")
    url = f"{config.http.base_url}/crl/racine-idp.crl"
    assert publish(_arl(other_key, other, 1, idp=url), "racine-idp").record.number == 1
    assert issuer.offline and config.issuer("ac-personnes").key_label == "ac-personnes"
    registry.close()


def test_offline_issuer_configuration_rules(private_config: Path) -> None:
    _, cert = _root("racine-test")
    text = private_config.read_text()
    for table, key in (("interval = \"1h\"\n", "interval"), ("delta = true\n", "delta"),
                       ("on_revocation_delay = 5\n", "on_revocation_delay")):
        private_config.write_text(text)
        _add_root(private_config, "racine-test", cert, table)
        with pytest.raises(ConfigError, match=f"crl.{key}: an issuer without key_label builds no CRL"):
            load_config(private_config)
    private_config.write_text(text)
    _add_root(private_config, "racine-test", cert)
    with open(private_config, "a") as fh:
        fh.write("\n[issuers.ocsp]\nvalidity = \"4d\"\n")
    with pytest.raises(ConfigError, match="only through a delegated responder"):
        load_config(private_config)


def test_number_floor_continues_a_previous_systems_numbering(private_config: Path) -> None:
    text = private_config.read_text()
    marker = 'key_label = "ac-structures"\n\n[issuers.crl]\n'
    assert marker in text
    private_config.write_text(text.replace(marker, marker + "number_floor = 4711\n"))
    built = json.loads(run_cli("crl", "build", "--config", str(private_config), "--issuer", "ac-structures",
                               "--json", check=True).stdout)
    assert [b["number"] for b in built] == [4712]
    out = subprocess.run(["openssl", "crl", "-inform", "DER", "-noout", "-crlnumber", "-in", built[0]["file"]],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "crlNumber=0x1268"  # 4712
    again = json.loads(run_cli("crl", "build", "--config", str(private_config), "--issuer", "ac-structures",
                               "--json", check=True).stdout)
    assert [b["number"] for b in again] == [4713]


def _metric(base: str, name: str, issuer: str) -> float:
    for line in http(base + "/metrics")[2].decode().splitlines():
        if line.startswith(f'{name}{{issuer="{issuer}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"{name} for {issuer} not exposed")


def test_offline_root_served_warned_and_published_through_the_admin_api(demo: Path) -> None:
    key, cert = _root("racine-test")
    _add_root(demo, "racine-test", cert, 'expiry_warning = "10d"\n')
    arl = demo.parent / "racine-test.crl"
    arl.write_bytes(_arl(key, cert, 1, days=5))
    published = run_cli("crl", "publish", "--config", str(demo), "--issuer", "racine-test", "--json", str(arl))
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout)["number"] == 1
    again = run_cli("crl", "publish", "--config", str(demo), "--issuer", "racine-test", str(arl))
    assert again.returncode == 1 and "CRL number 1 is not greater than 1" in again.stderr
    token = (demo.parent / "secrets" / "admin-token").read_text().strip()
    demo_root = demo.parent / "ca" / "ac-racine.crl"  # signed at init-demo, already published
    revoke = run_cli("revoke", "--config", str(demo), "--issuer", "ac-racine", "--serial", "01", "--reason",
                     "cACompromise")
    assert revoke.returncode == 1 and "ac-racine is offline" in revoke.stderr
    with serve(demo) as served:
        ready = json.loads(http(served.base + "/readyz")[2])
        assert ready["status"] == "ready", ready
        assert "racine-test.crl (number 1) reaches its nextUpdate in 5.0 days" in ready["warnings"]["crl-offline"]
        assert "ac-racine" not in ready["warnings"]["crl-offline"]  # its ARL is valid for a year
        assert _metric(served.base, "annuaire_crl_renewal_due", "racine-test") == 1
        assert _metric(served.base, "annuaire_crl_renewal_due", "ac-racine") == 0
        status = json.loads(http(served.base + "/status.json")[2])  # public: which CRL, said for relying parties
        assert {"part": "crl", "code": "crl-stale", "file": "racine-test.crl"}.items() <= next(
            p for p in status["health"]["problems"] if p.get("file") == "racine-test.crl").items(), status
        assert not any(p.get("file") == "ac-racine.crl" for p in status["health"]["problems"]), status
        operations = call(served.admin, "GET", "/api/v1/operations", token=token)[2]  # the operator: the details
        assert any("racine-test.crl (number 1) reaches its nextUpdate" in p["text"]
                   for p in operations["health"]["problems"]), operations
        assert http(served.base + "/crl/racine-test.crl")[2] == arl.read_bytes()

        new = _arl(key, cert, 2, days=90)
        status_code, _, answer = call(served.admin, "POST", "/api/v1/crls/racine-test", new, token=token,
                                      content_type="application/pkix-crl")
        assert status_code == 201 and answer["number"] == 2 and answer["url"].endswith("/crl/racine-test.crl")
        assert http(served.base + "/crl/racine-test.crl")[2] == new  # served at once
        assert _metric(served.base, "annuaire_crl_renewal_due", "racine-test") == 0
        assert "warnings" not in json.loads(http(served.base + "/readyz")[2])
        for body, path, code, why in ((new, "/api/v1/crls/racine-test", 409, "not greater than 2"),
                                      (demo_root.read_bytes(), "/api/v1/crls/racine-test", 422, "issued by"),
                                      (b"junk", "/api/v1/crls/racine-test", 422, "neither a DER CRL"),
                                      (new, "/api/v1/crls/nobody", 404, "no configured issuer")):
            status_code, _, answer = call(served.admin, "POST", path, body, token=token)
            assert status_code == code and why in answer["detail"], answer
        status_code, _, answer = call(served.admin, "POST", "/api/v1/revocations",
                                      {"issuer": "ac-racine", "serial": "01", "reason": "cACompromise"}, token=token)
        assert status_code == 409 and "offline" in answer["detail"]
