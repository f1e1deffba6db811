"""Import of 100,000 certificates: rows/s and peak RSS of `annuaire import` (a separate process).

The certificates are issued once by the demo issuance stub (EC demo, HSM-signed) into PEM bundles of
1,000 under bench/out/import-100k/ and reused by later runs. ``--tiny``: 200 certificates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import OUT, arguments, config_with_data_dir, demo, peak_rss_mb_children, report, tiny_demo
from directory.demo import issuance
from directory.demo.init import PERSONNES, DemoUrls, issue_end_entities
from directory.demo.issuance import CertificateAuthority
from directory.hsm.signer import HsmSettings, HsmSigner

TOTAL = int(os.environ.get("BENCH_IMPORT_TOTAL", "100000"))
TINY = 200
BUNDLE = 1000


def certificates_dir(total: int) -> Path:
    """Where ``generate`` keeps ``total`` certificates (import-100k for 100,000)."""
    return OUT / (f"import-{total // 1000}k" if total % 1000 == 0 else f"import-{total}")


def generate(directory: Path, target: Path, total: int = TOTAL) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    target.mkdir(parents=True, exist_ok=True)
    bundle = min(BUNDLE, total)
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
    for n in range(total // bundle):
        path = target / f"bundle-{n:04d}.pem"
        if path.exists():
            continue
        issued = issue_end_entities(hsm, cas, bundle, "ec", urls, first=n * bundle)  # distinct holders
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(issuance.pem(c) for _, _, c in issued))
        tmp.rename(path)
        print(f"\rgenerated {(n + 1) * bundle}/{total} ({time.monotonic() - start:.0f}s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    hsm.close()
    assert PERSONNES in cas


def main() -> int:
    args = arguments(__doc__).parse_args()
    total = TINY if args.tiny else TOTAL
    directory = tiny_demo("ec") if args.tiny else demo("hsm-ec", "ec")
    certs = certificates_dir(total)
    generate(directory, certs, total)
    run_dir = OUT / "import-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = config_with_data_dir(directory, run_dir)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "directory.cli", "import", "--config", str(config), "--json",
                             str(certs)], capture_output=True, text=True)
    elapsed = time.monotonic() - start
    print(result.stderr.strip()[-500:], file=sys.stderr)
    if result.returncode != 0:
        print(result.stdout[-2000:], file=sys.stderr)
        return 1
    imported = json.loads(result.stdout)
    rss = peak_rss_mb_children()
    report({"certificates": total, "imported": imported["imported"], "refused": len(imported["refused"]),
            "seconds": round(elapsed, 2), "rows_per_s": round(total / elapsed, 1), "peak_rss_mb": round(rss, 1)}, args,
           [f"| import | {total:,} certificates | {elapsed:.1f} s | {total / elapsed:,.0f} rows/s | "
            f"peak RSS {rss:.0f} MB |"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
