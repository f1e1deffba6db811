"""An existing CA run with `openssl ca`, as an operator has one before moving to annuaire: a root kept
offline (its key in a file that never reaches the service) and an issuing CA with an OCSP responder, hex
serials from 1000 and CRL numbers already at 0x1267, a few end entities, one revoked, one on hold."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

CDP_BASE = "http://pki.ops.example"  # what the operator's certificates name; the tests fetch from the service

_CA_CNF = """\
[ca]
default_ca = this
[this]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/private/ca.key
default_md = sha256
default_days = 365
default_crl_days = {crl_days}
policy = anything
unique_subject = no
copy_extensions = none
[anything]
countryName = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied
serialNumber = optional
[sub_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
crlDistributionPoints = URI:{cdp_base}/crl/ops-racine.crl
[ocsp_signer]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = OCSPSigning
noCheck = ignored
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[card]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
crlDistributionPoints = URI:{cdp_base}/crl/ops-personnes.crl
authorityInfoAccess = OCSP;URI:{cdp_base}/ocsp
[root_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""


def openssl(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, f"openssl {' '.join(args)}: {result.stderr}"
    return result.stdout


@dataclass
class OpensslCa:
    root: Path  # root/ca.pem, root/index.txt, root/private/ca.key (the offline part)
    issuing: Path  # issuing/ca.pem, issuing/index.txt, issuing/newcerts/, issuing/private/*.key
    chain: Path  # root + issuing, the operator's own chain

    def cert(self, serial: str) -> Path:
        return self.issuing / "newcerts" / f"{serial}.pem"

    def gencrl(self, which: str, out: Path) -> Path:
        folder = self.root if which == "root" else self.issuing
        openssl("ca", "-config", str(folder / "ca.cnf"), "-gencrl", "-out", str(out))
        return out


def _folder(path: Path, serial: str, crlnumber: str, crl_days: int) -> None:
    (path / "newcerts").mkdir(parents=True)
    (path / "private").mkdir()
    (path / "index.txt").write_text("")
    (path / "serial").write_text(serial + "\n")
    (path / "crlnumber").write_text(crlnumber + "\n")
    (path / "ca.cnf").write_text(_CA_CNF.format(dir=path, cdp_base=CDP_BASE, crl_days=crl_days))


def _key(path: Path) -> None:
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))


def _issue(ca: Path, key: Path, subject: str, extensions: str) -> None:
    csr = key.with_suffix(".csr")
    openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    openssl("ca", "-config", str(ca / "ca.cnf"), "-batch", "-notext", "-extensions", extensions, "-in", str(csr))


def build(directory: Path, cards: int = 4) -> OpensslCa:
    """The root (ARLs numbered from 0x0100), the issuing CA (serials from 0x1000, CRLs from 0x1267 = 4711),
    its OCSP responder (serial 1000) and ``cards`` end entities (1001...); 1003 revoked (keyCompromise),
    1004 on hold."""
    root, issuing = directory / "root", directory / "issuing"
    _folder(root, "01", "0100", 30)
    _folder(issuing, "1000", "1267", 7)
    _key(root / "private" / "ca.key")
    openssl("req", "-x509", "-new", "-key", str(root / "private" / "ca.key"), "-days", "3650", "-subj",
            "/C=FR/O=CA EXISTANTE/CN=AC RACINE EXISTANTE", "-config", str(root / "ca.cnf"), "-extensions", "root_ca",
            "-out", str(root / "ca.pem"))
    _key(issuing / "private" / "ca.key")
    _issue(root, issuing / "private" / "ca.key", "/C=FR/O=CA EXISTANTE/CN=AC PERSONNES EXISTANTE", "sub_ca")
    (issuing / "ca.pem").write_bytes((root / "newcerts" / "01.pem").read_bytes())
    _key(issuing / "private" / "ocsp.key")
    _issue(issuing, issuing / "private" / "ocsp.key", "/C=FR/O=CA EXISTANTE/CN=OCSP AC PERSONNES EXISTANTE",
           "ocsp_signer")
    for n in range(cards):
        key = issuing / "private" / f"card{n}.key"
        _key(key)
        _issue(issuing, key, f"/C=FR/O=CLINIQUE EXISTANTE/CN=Soignant {n}/serialNumber=8100000000{n:02d}", "card")
    openssl("ca", "-config", str(issuing / "ca.cnf"), "-revoke", str(issuing / "newcerts" / "1003.pem"),
            "-crl_reason", "keyCompromise")
    openssl("ca", "-config", str(issuing / "ca.cnf"), "-revoke", str(issuing / "newcerts" / "1004.pem"),
            "-crl_hold", "holdInstructionReject")
    chain = directory / "chain.pem"
    chain.write_bytes((root / "ca.pem").read_bytes() + (issuing / "ca.pem").read_bytes())
    return OpensslCa(root, issuing, chain)
