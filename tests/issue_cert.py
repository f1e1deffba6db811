"""Issue one extra end-entity certificate with a demo's CA key (run as a script: python -m tests.issue_cert).

Usage: python -m tests.issue_cert CONFIG ISSUER OUT.pem — used by tests that need a certificate the
registry has never seen, signed by a configured CA (through the issuance stub and the HSM).
"""

from __future__ import annotations

import sys
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from directory.config import load_config
from directory.demo import issuance
from directory.demo.init import DemoUrls, issue_end_entities
from directory.runtime import open_hsm


def main(config_path: str, issuer: str, out: str) -> int:
    config = load_config(config_path)
    if not config.demo:
        print("refusing: not a demo configuration", file=sys.stderr)
        return 1
    hsm = open_hsm(config)
    try:
        ca_cert = config.issuer(issuer).certificate
        spki = ca_cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        ca = issuance.CertificateAuthority(issuer, ca_cert.subject, hsm.key(config.issuer(issuer).key_label, ca_cert),
                                           spki, ca_cert)
        issued = issue_end_entities(hsm, {"ac-personnes": ca, "ac-structures": ca}, 1, "ec",
                                    DemoUrls(config.http.base_url, "ldap://127.0.0.1:3890"))
        Path(out).write_bytes(issuance.pem(issued[0][2]))
    finally:
        hsm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
