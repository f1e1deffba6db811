"""The path of an operator moving an existing CA onto annuaire, as deploy/README's chapter tells it, in one
test: an `openssl ca` CA (root offline, the issuing CA's key imported into a SoftHSM2 token with
softhsm2-util), a hand-written configuration, check-config, index.txt imported (hex serials), the numbering
carried over, the root's ARL published, the operator's own slapd bootstrapped, serve, and every answer
checked with openssl and ldapsearch against the operator's own chain."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tests.conftest import run_cli
from tests.openssl_ca import OpensslCa, build, openssl
from tests.operator_slapd import SUFFIX, operator_slapd
from tests.served import http, serve

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "5678"


def _token(directory: Path, ca: OpensslCa) -> dict[str, str]:
    """A SoftHSM2 token holding the issuing CA's key (softhsm2-util --import) and the OCSP responder's
    (pkcs11-tool --write-object), imported as an operator does; the key files are then deleted (from here on
    only the token signs)."""
    (directory / "tokens").mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\n")
    env = {"SOFTHSM2_CONF": str(conf)}

    def util(*args: str) -> None:
        result = subprocess.run(["softhsm2-util", *args], capture_output=True, text=True, env={**os.environ, **env})
        assert result.returncode == 0, result.stdout + result.stderr

    util("--init-token", "--free", "--label", "ops-token", "--so-pin", "123456", "--pin", PIN)
    private = ca.issuing / "private"
    util("--import", str(private / "ca.key"), "--token", "ops-token", "--label", "ac-ops", "--id", "01", "--pin", PIN)
    # the other way deploy/README gives: OpenSC's pkcs11-tool, any module, the key in DER
    openssl("pkey", "-in", str(private / "ocsp.key"), "-outform", "DER", "-out", str(private / "ocsp.der"))
    written = subprocess.run(["pkcs11-tool", "--module", MODULE, "--token-label", "ops-token", "--login", "--pin", PIN,
                              "--write-object", str(private / "ocsp.der"), "--type", "privkey", "--label",
                              "ocsp-ac-ops", "--id", "02", "--usage-sign"], capture_output=True, text=True,
                             env={**os.environ, **env})
    assert written.returncode == 0, written.stderr
    for key in ("ca.key", "ocsp.key", "ocsp.der"):
        (private / key).unlink()
    return env


def _config(directory: Path, ca: OpensslCa, conf: str, ldap_url: str, data: Path) -> Path:
    """The configuration an operator writes by hand (deploy/README, "Moving an existing CA")."""
    (directory / "hsm-pin").write_text(PIN + "\n")
    (directory / "ldap-password").write_text("service-secret")
    (directory / "admin-token").write_text("operator-admin-token\n")
    config = directory / "annuaire.toml"
    config.write_text(f"""\
data_dir = "{data}"

[hsm]
module = "{MODULE}"
token_label = "ops-token"
pin_file = "hsm-pin"
softhsm2_conf = "{conf}"

[http]
listen = "127.0.0.1:8080"
base_url = "http://pki.ops.example"

[ldap]
urls = ["{ldap_url.replace('127.0.0.1', 'localhost')}"]
bind_dn = "cn=annuaire,{SUFFIX}"
password_file = "ldap-password"
suffix = "{SUFFIX}"

[admin]
listen = "127.0.0.1:8443"
token_file = "admin-token"

[[issuers]]
name = "ops-racine"
certificate = "{ca.root / 'ca.pem'}"
# no key_label: the root stays offline; its ARL comes from `annuaire crl publish`

[[issuers]]
name = "ops-personnes"
certificate = "{ca.issuing / 'ca.pem'}"
key_label = "ac-ops"

[issuers.crl]
on_revocation_delay = 2
delta = true

[issuers.ocsp]
signer_certificate = "{ca.issuing / 'newcerts' / '1000.pem'}"
signer_key_label = "ocsp-ac-ops"
""")
    return config


def _verify(ca: OpensslCa, base: str, serial: str, tmp: Path) -> str:
    """`openssl verify -crl_check_all` (no -use_deltas) with the CRLs the service serves, the operator's chain."""
    crls = []
    for name in ("ops-racine", "ops-personnes"):
        path = tmp / f"{name}.crl"
        path.write_bytes(http(f"{base}/crl/{name}.crl")[2])
        crls += ["-CRLfile", str(path)]
    out = subprocess.run(["openssl", "verify", "-crl_check_all", "-CAfile", str(ca.chain), *crls,
                          str(ca.cert(serial))], capture_output=True, text=True)
    return out.stdout + out.stderr


def _ocsp(ca: OpensslCa, base: str, serial: str) -> str:
    out = subprocess.run(["openssl", "ocsp", "-issuer", str(ca.issuing / "ca.pem"), "-cert", str(ca.cert(serial)),
                          "-url", f"{base}/ocsp", "-CAfile", str(ca.chain)], capture_output=True, text=True)
    assert "Response verify OK" in out.stderr, out.stderr
    return out.stdout


def test_an_existing_openssl_ca_moves_onto_annuaire(tmp_path: Path) -> None:
    ca = build(tmp_path / "openssl-ca")
    last_crl = ca.gencrl("issuing", tmp_path / "last-before-the-move.crl")  # the old system's last: 0x1267 = 4711
    env = _token(tmp_path / "hsm", ca)
    arl = ca.gencrl("root", tmp_path / "arl-0100.crl")  # signed on the offline machine
    with operator_slapd(tmp_path / "slapd") as slapd:
        config = _config(tmp_path, ca, env["SOFTHSM2_CONF"], slapd.url, tmp_path / "data")
        c = ("--config", str(config))

        checked = run_cli("check-config", *c, env=env)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "key 'ac-ops'" in checked.stdout and "key 'ocsp-ac-ops'" in checked.stdout
        assert "CKM_ECDSA" in checked.stdout

        imported = json.loads(run_cli("import", *c, "--json", str(ca.root / "index.txt"),
                                      str(ca.issuing / "index.txt"), check=True, env=env).stdout)
        assert imported["imported"] == 6 and imported["revocations_applied"] == 2 and not imported["refused"]
        shown = json.loads(run_cli("show", *c, "--issuer", "ops-personnes", "--serial", "1004", "--json",
                                   check=True, env=env).stdout)
        assert shown["serial_hex"] == "1004" and shown["status"] == "on-hold"

        published = json.loads(run_cli("crl", "publish", *c, "--issuer", "ops-personnes", str(last_crl), "--json",
                                       check=True, env=env).stdout)
        assert published["number"] == 4711  # the floor: what annuaire builds next is greater
        published = json.loads(run_cli("crl", "publish", *c, "--issuer", "ops-racine", str(arl), "--json",
                                       check=True, env=env).stdout)
        assert published["number"] == 0x100

        run_cli("ldap", "bootstrap", *c, "--admin-dn", slapd.admin_dn, "--admin-password-file",
                str(slapd.admin_password_file), check=True, env=env)

        with serve(config, env=env) as served:
            base = served.base
            deadline = time.monotonic() + 20
            while True:  # the registry knows more than the old system's last CRL: a new one is built at start
                full = http(f"{base}/crl/ops-personnes.crl")[2]
                (tmp_path / "full.crl").write_bytes(full)
                number = openssl("crl", "-inform", "DER", "-in", str(tmp_path / "full.crl"), "-noout", "-crlnumber")
                if int(number.strip().split("=0x")[1], 16) > 4711:
                    break
                assert time.monotonic() < deadline, number
                time.sleep(0.2)

            assert f"{ca.cert('1001')}: OK" in _verify(ca, base, "1001", tmp_path)
            assert "certificate revoked" in _verify(ca, base, "1003", tmp_path)
            assert "certificate revoked" in _verify(ca, base, "1004", tmp_path)  # on hold
            assert ": good" in _ocsp(ca, base, "1001")
            assert ": revoked" in _ocsp(ca, base, "1003") and "Reason: keyCompromise" in _ocsp(ca, base, "1003")

            # a revocation by the serial as openssl prints it, in the full CRL within on_revocation_delay
            printed = openssl("x509", "-in", str(ca.cert("1002")), "-noout", "-serial").strip()
            assert printed == "serial=1002"
            run_cli("revoke", *c, "--issuer", "ops-personnes", "--serial", printed.split("=")[1], "--reason",
                    "keyCompromise", check=True, env=env)
            started = time.monotonic()
            while "certificate revoked" not in (out := _verify(ca, base, "1002", tmp_path)):
                assert time.monotonic() - started < 2 + 5, out
                time.sleep(0.2)
            assert ": revoked" in _ocsp(ca, base, "1002")

            # the root's next ARL, signed on the offline machine, published while the service runs
            next_arl = ca.gencrl("root", tmp_path / "arl-0101.crl")
            run_cli("crl", "publish", *c, "--issuer", "ops-racine", str(next_arl), check=True, env=env)
            assert http(f"{base}/crl/ops-racine.crl")[2] == openssl_der(next_arl)
            ready = json.loads(http(f"{base}/readyz")[2])
            assert ready["status"] == "ready", ready

            # the operator's slapd, filled by the service's worker, found by relying parties
            deadline = time.monotonic() + 20
            while True:
                found = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", slapd.url, "-b", SUFFIX,
                                        "(healthProfessionalId=810000000000)", "cn", "userCertificate;binary"],
                                       capture_output=True, text=True).stdout
                ca_entry = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", slapd.url, "-b", f"cn=ops-racine,ou=AC,"
                                           f"{SUFFIX}", "-s", "base", "authorityRevocationList;binary"],
                                          capture_output=True, text=True).stdout
                revoked = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", slapd.url, "-b", SUFFIX,
                                          "(healthProfessionalId=810000000001)", "userCertificate;binary"],
                                         capture_output=True, text=True).stdout
                if "userCertificate;binary::" in found and "authorityRevocationList;binary::" in ca_entry \
                        and "userCertificate;binary::" not in revoked:
                    break
                assert time.monotonic() < deadline, (found, ca_entry, revoked)
                time.sleep(0.3)
            assert "cn: Soignant 0" in found


def openssl_der(pem_crl: Path) -> bytes:
    """The DER of a PEM CRL (what the service serves)."""
    return subprocess.run(["openssl", "crl", "-in", str(pem_crl), "-outform", "DER"], capture_output=True,
                          check=True).stdout
