"""`annuaire import`: PEM, bundles, DER, folders, index.txt, and every kind of bad input."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from directory.config import load_config
from directory.demo import issuance
from directory.demo.init import DemoUrls
from directory.hsm.signer import HsmSettings, HsmSigner
from tests.conftest import run_cli


def _manifest(demo: Path) -> list[dict]:
    return json.loads((demo / "certs" / "manifest.json").read_text())


def _pem(demo: Path, n: int) -> bytes:
    return (demo / "certs" / _manifest(demo)[n]["file"]).read_bytes()


def _der(demo: Path, n: int) -> bytes:
    return x509.load_pem_x509_certificate(_pem(demo, n)).public_bytes(Encoding.DER)


def _rows(config: Path) -> int:
    db = load_config(config).data_dir / "registry.sqlite3"
    if not db.exists():
        return 0
    return sqlite3.connect(db).execute("SELECT COUNT(*) FROM certificates").fetchone()[0]


def _import(config: Path, *paths: Path, extra: tuple[str, ...] = ()) -> tuple[int, dict]:
    result = run_cli("import", "--config", str(config), "--json", *extra, *map(str, paths))
    return result.returncode, json.loads(result.stdout)


def test_pem_der_bundle_and_folder(private_config: Path, demo_token: Path, tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "one.pem").write_bytes(_pem(demo_token, 0))
    (tmp_path / "in" / "sub" / "two.der").write_bytes(_der(demo_token, 1))
    (tmp_path / "in" / "sub" / "bundle.crt").write_bytes(_pem(demo_token, 2) + b"\n" + _pem(demo_token, 3))
    code, summary = _import(private_config, tmp_path / "in")
    assert code == 0, summary
    assert summary["imported"] == 4 and summary["refused"] == []
    # idempotent
    code, summary = _import(private_config, tmp_path / "in")
    assert code == 0 and summary["imported"] == 0 and summary["already_present"] == 4
    assert _rows(private_config) == 4


def test_chain_bundle_imports_issuing_cas_and_refuses_the_root(private_config: Path, demo_token: Path) -> None:
    code, summary = _import(private_config, demo_token / "ca" / "chain.pem")
    assert code == 1
    assert summary["imported"] == 2  # the issuing CAs, under the root (its ARL lists them when revoked)
    assert len(summary["refused"]) == 1  # the root itself
    assert "issuer ac-racine's own certificate: it is configured, not imported" in summary["refused"][0]["reason"]
    code, summary = _import(private_config, demo_token / "ca" / "ocsp-ac-personnes.pem")
    assert code == 0 and summary["imported"] == 1


def test_whole_demo_folder_imports(private_config: Path, demo_token: Path) -> None:
    code, summary = _import(private_config, demo_token / "certs")
    assert code == 0, summary["refused"][:3]
    assert summary["imported"] == len(_manifest(demo_token))


def _unknown_ca_cert() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AC PIRATE")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(Encoding.PEM)


def test_bad_inputs_are_refused_with_the_exact_reason(private_config: Path, demo_token: Path,
                                                      tmp_path: Path) -> None:
    good = _der(demo_token, 0)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "truncated.der").write_bytes(good[: len(good) // 2])
    (bad / "garbage.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n")
    (bad / "unknown-ca.pem").write_bytes(_unknown_ca_cert())
    tampered = bytearray(good)
    tampered[-5] ^= 0xFF
    (bad / "bad-signature.der").write_bytes(bytes(tampered))
    (bad / "text.cer").write_bytes(b"hello")
    (bad / "good.pem").write_bytes(_pem(demo_token, 1))
    code, summary = _import(private_config, bad)
    assert code == 1
    reasons = {Path(r["source"].split("#")[0]).name: r["reason"] for r in summary["refused"]}
    assert "not a valid DER X.509 certificate" in reasons["truncated.der"]
    assert reasons["garbage.pem"] == "PEM block with invalid base64"
    assert "'CN=AC PIRATE' is not a configured issuer" in reasons["unknown-ca.pem"]
    assert "signature does not verify under issuer ac-personnes" in reasons["bad-signature.der"]
    assert "neither PEM nor DER" in reasons["text.cer"]
    assert summary["imported"] == 1  # the good one still goes in
    assert _rows(private_config) == 1


def test_same_serial_other_bytes_is_a_conflict_and_changes_nothing(private_config: Path, demo_token: Path,
                                                                   tmp_path: Path) -> None:
    original = x509.load_pem_x509_certificate(_pem(demo_token, 0))
    code, _ = _import(private_config, demo_token / "certs" / _manifest(demo_token)[0]["file"])
    assert code == 0
    # issue a second certificate with the same serial through the stub (HSM-signed by the real CA key)
    config = load_config(private_config)
    hsm = HsmSigner(HsmSettings(config.hsm.module, config.hsm.token_label, config.hsm.read_pin(), 1,
                                str(config.hsm.softhsm2_conf)))
    try:
        ca_cert = config.issuer("ac-personnes").certificate
        ca = issuance.CertificateAuthority("ac-personnes", ca_cert.subject,
                                           hsm.key("ac-personnes", ca_cert),
                                           ca_cert.public_key().public_bytes(Encoding.DER, _spki()), ca_cert)
        twin = issuance.issue(ca, original.subject, original.public_key().public_bytes(Encoding.DER, _spki()),
                              original.not_valid_before_utc + timedelta(seconds=1), original.not_valid_after_utc,
                              issuance.end_entity_extensions(ca, original.public_key().public_bytes(
                                  Encoding.DER, _spki()), "authentication", [], [],
                                  DemoUrls("http://x", "ldap://x").crl("ac-personnes"), None, None),
                              serial=original.serial_number)
    finally:
        hsm.close()
    (tmp_path / "twin.pem").write_bytes(issuance.pem(twin))
    code, summary = _import(private_config, tmp_path / "twin.pem")
    assert code == 1
    assert "conflict" in summary["refused"][0]["reason"] and "nothing changed" in summary["refused"][0]["reason"]
    db = load_config(private_config).data_dir / "registry.sqlite3"
    stored = sqlite3.connect(db).execute("SELECT der FROM certificates").fetchall()
    assert [bytes(r[0]) for r in stored] == [original.public_bytes(Encoding.DER)]


def _spki():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.serialization import PublicFormat

    return PublicFormat.SubjectPublicKeyInfo


def _index(demo_token: Path, ca_dir: Path, revocations: dict[int, str], count: int = 5) -> list[dict]:
    """An openssl ca database (index.txt + newcerts/) over the first ``count`` ac-personnes certificates."""
    (ca_dir / "newcerts").mkdir(parents=True, exist_ok=True)
    manifest = [m for m in _manifest(demo_token) if m["issuer"] == "ac-personnes"][:count]
    lines = []
    for n, entry in enumerate(manifest):
        cert = x509.load_pem_x509_certificate((demo_token / "certs" / entry["file"]).read_bytes())
        serial = format(cert.serial_number, "X")
        serial = serial if len(serial) % 2 == 0 else "0" + serial
        (ca_dir / "newcerts" / f"{serial}.pem").write_bytes(issuance.pem(cert))
        expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        status = "R" if n in revocations else "V"
        subject = "/" + "/".join(a.rfc4514_string() for a in cert.subject)
        lines.append(f"{status}\t{expiry}\t{revocations.get(n, '')}\t{serial}\tunknown\t{subject}")
    (ca_dir / "index.txt").write_text("\n".join(lines) + "\n")
    return manifest


def test_openssl_ca_index_with_revocations(private_config: Path, demo_token: Path, tmp_path: Path) -> None:
    ca_dir = tmp_path / "openssl-ca"
    at = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
    compromise = at - timedelta(hours=3)
    utc = at.strftime("%y%m%d%H%M%SZ")
    revocations = {1: f"{utc},keyTime,{compromise.strftime('%Y%m%d%H%M%SZ')}", 2: f"{utc},superseded",
                   3: f"{utc},certificateHold,holdInstructionReject"}
    manifest = _index(demo_token, ca_dir, revocations)
    with open(ca_dir / "index.txt", "a") as index:
        index.write("this is not an index line\n")
    code, summary = _import(private_config, ca_dir / "index.txt")
    assert code == 1  # the junk line is listed
    assert summary["imported"] == 5 and summary["revocations_applied"] == 3 and summary["differences"] == []
    assert "not an openssl ca index line" in summary["refused"][0]["reason"]
    show = run_cli("show", "--config", str(private_config), "--issuer", "ac-personnes",
                   "--serial", "0x" + manifest[1]["serial_hex"], "--json", check=True)
    data = json.loads(show.stdout)
    assert data["status"] == "revoked" and data["reason"] == "keyCompromise"
    assert data["revocation_time"] == at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert data["invalidity_date"] == compromise.strftime("%Y-%m-%dT%H:%M:%SZ")
    held = json.loads(run_cli("show", "--config", str(private_config), "--issuer", "ac-personnes", "--serial",
                              "0x" + manifest[3]["serial_hex"], "--json", check=True).stdout)
    assert held["status"] == "on-hold"
    # re-running is a no-op
    code, summary = _import(private_config, ca_dir / "index.txt")
    assert summary["imported"] == 0 and summary["revocations_applied"] == 0


def _status(config: Path, serial_hex: str) -> tuple[str, str | None]:
    data = json.loads(run_cli("show", "--config", str(config), "--issuer", "ac-personnes", "--serial", serial_hex,
                              "--json", check=True).stdout)
    return data["status"], data["reason"]


def test_a_reimport_never_silently_undoes_a_later_change(private_config: Path, demo_token: Path,
                                                        tmp_path: Path) -> None:
    """A hold released and a certificate revoked in annuaire after the index was imported: importing the
    same index again keeps both newer states and reports each serial (human and --json); the file's older
    state only with --apply-older; a revocation the file dates after the registry's change is applied."""
    ca_dir = tmp_path / "openssl-ca"
    held_at = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
    manifest = _index(demo_token, ca_dir, {3: f"{held_at:%y%m%d%H%M%SZ},certificateHold"})
    hold, valid, later = manifest[3]["serial_hex"], manifest[0]["serial_hex"], manifest[4]["serial_hex"]
    assert _import(private_config, ca_dir / "index.txt")[1]["revocations_applied"] == 1
    run_cli("release-hold", "--config", str(private_config), "--issuer", "ac-personnes", "--serial", hold, check=True)
    run_cli("revoke", "--config", str(private_config), "--issuer", "ac-personnes", "--serial", valid,
            "--reason", "keyCompromise", check=True)

    code, summary = _import(private_config, ca_dir / "index.txt")
    assert code == 0 and summary["revocations_applied"] == 0
    differences = {d["serial_hex"]: d for d in summary["differences"]}
    assert set(differences) == {hold, valid}
    assert differences[hold]["registry"]["status"] == "good"
    assert differences[hold]["file"] == {"status": "on-hold", "reason": "certificateHold",
                                         "revocation_time": f"{held_at:%Y-%m-%dT%H:%M:%SZ}", "invalidity_date": None}
    assert differences[valid]["registry"]["reason"] == "keyCompromise"
    assert differences[valid]["file"]["status"] == "good"
    assert all(d["outcome"] == "registry kept (its change is newer)" for d in differences.values())
    assert _status(private_config, hold) == ("good", None) and _status(private_config, valid)[0] == "revoked"

    human = run_cli("import", "--config", str(private_config), str(ca_dir / "index.txt"))
    assert human.returncode == 0 and "newer in the registry 2" in human.stdout
    assert (f"differs: {ca_dir / 'index.txt'}:4 ({hold.upper() if len(hold) % 2 == 0 else '0' + hold.upper()}.pem): "
            f"ac-personnes 0x{hold}: the registry says good, changed after the file's on-hold (certificateHold) since "
            f"{held_at:%Y-%m-%dT%H:%M:%SZ}: kept the registry's (--apply-older applies the file's)") in human.stderr

    # the CA revokes another certificate now: dated after anything the registry did, it is applied
    now = datetime.now(UTC).replace(microsecond=0)
    lines = (ca_dir / "index.txt").read_text().splitlines()
    fields = lines[4].split("\t")
    lines[4] = "\t".join(["R", fields[1], f"{now:%y%m%d%H%M%SZ},superseded", *fields[3:]])
    (ca_dir / "index.txt").write_text("\n".join(lines) + "\n")
    code, summary = _import(private_config, ca_dir / "index.txt")
    assert summary["revocations_applied"] == 1 and len(summary["differences"]) == 2
    assert _status(private_config, later) == ("revoked", "superseded")

    # --apply-older: the hold goes back; the revocation stays (final), refused with the rule's reason
    code, summary = _import(private_config, ca_dir / "index.txt", extra=("--apply-older",))
    assert code == 1 and summary["revocations_applied"] == 1
    assert [d["outcome"] for d in summary["differences"]] == ["file's older state applied"]
    assert "revocation is final" in summary["refused"][0]["reason"]
    assert _status(private_config, hold) == ("on-hold", "certificateHold")
    assert _status(private_config, valid)[0] == "revoked"


@pytest.mark.parametrize("missing", ["does-not-exist.pem"])
def test_missing_path_is_listed(private_config: Path, tmp_path: Path, missing: str) -> None:
    code, summary = _import(private_config, tmp_path / missing)
    assert code == 1 and summary["refused"][0]["reason"] == "no such file or directory"
