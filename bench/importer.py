"""Import of 100,000 certificates: rows/s and peak RSS of `annuaire import` (a separate process).

The certificates are issued once by the demo issuance stub (EC demo, HSM-signed) into 100 PEM bundles
of 1,000 under bench/out/import-100k/ and reused by later runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import OUT, config_with_data_dir, demo, peak_rss_mb_children
from directory.demo import issuance
from directory.demo.init import PERSONNES, DemoUrls, issue_end_entities
from directory.demo.issuance import CertificateAuthority
from directory.hsm.signer import HsmSettings, HsmSigner

TOTAL = int(os.environ.get("BENCH_IMPORT_TOTAL", "100000"))
BUNDLE = 1000


def generate(directory: Path, target: Path, total: int = TOTAL) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    target.mkdir(parents=True, exist_ok=True)
    pin = (directory / "hsm" / "pin").read_text().strip()
    hsm = HsmSigner(HsmSettings("/usr/lib/softhsm/libsofthsm2.so", "annuaire-demo", pin, 2,
                                softhsm2_conf=str(directory / "hsm" / "softhsm2.conf")))
    cas = {}
    for name in ("ac-personnes", "ac-structures"):
        cert = x509.load_pem_x509_certificate((directory / "ca" / f"{name}.pem").read_bytes())
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        cas[name] = CertificateAuthority(name, cert.subject, hsm.key(name, cert), spki, cert)
    urls = DemoUrls("http://127.0.0.1:8080", "ldap://127.0.0.1:3890")
    start = time.monotonic()
    for n in range(total // BUNDLE):
        path = target / f"bundle-{n:04d}.pem"
        if path.exists():
            continue
        issued = issue_end_entities(hsm, cas, BUNDLE, "ec", urls, first=n * BUNDLE)  # distinct holders
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(issuance.pem(c) for _, _, c in issued))
        tmp.rename(path)
        print(f"\rgenerated {(n + 1) * BUNDLE}/{total} ({time.monotonic() - start:.0f}s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    hsm.close()
    assert PERSONNES in cas


def main() -> int:
    directory = demo("hsm-ec", "ec")
    certs = OUT / f"import-{TOTAL // 1000}k"
    generate(directory, certs)
    run_dir = OUT / "import-run"
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    config = config_with_data_dir(directory, run_dir)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "directory.cli", "import", "--config", str(config), str(certs)],
                            capture_output=True, text=True)
    elapsed = time.monotonic() - start
    print(result.stdout.strip(), result.stderr.strip()[-500:])
    if result.returncode != 0:
        return 1
    print(f"| import | {TOTAL:,} certificates | {elapsed:.1f} s | {TOTAL / elapsed:,.0f} rows/s | "
          f"peak RSS {peak_rss_mb_children():.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
