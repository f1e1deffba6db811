"""CRL build: `annuaire crl build` vs `openssl ca -gencrl`, 10k / 100k / 1M revoked entries, RSA-2048 and P-256.

Both sides list the same serials with the same revocation time and reason (superseded), sign with a key of
the same type and size, and run as separate processes on the same machine in the same run; wall time
and peak RSS are measured per process (``os.wait4``). Our side includes Python start-up, config loading,
HSM login, the self-check (parse back, every entry's extensions parsed, signature verification) and the
atomic publication; the entry walk of the self-check is also timed on its own.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bench.common import OUT, config_with_data_dir, demo
from directory import der
from directory.crl.entrycheck import check_entry_extensions

SIZES = [int(x) for x in os.environ.get("BENCH_CRL_SIZES", "10000,100000,1000000").split(",")]
REVOKED_AT = 1_790_000_000  # 2026-09-21
NOT_AFTER = 1_900_000_000
SERIAL_BASE = 0x10000000  # 8 hex digits: openssl wants an even number


def measure(cmd: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child process."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    if status != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
    return elapsed, usage.ru_maxrss / 1024


def our_side(demo_dir: Path, n: int, work: Path) -> tuple[float, float, int]:
    shutil.rmtree(work, ignore_errors=True)
    config = config_with_data_dir(demo_dir, work)
    data = work / "data"
    # registry with the issuer, then n revoked rows straight in (setup, not timed)
    subprocess.run([sys.executable, "-m", "directory.cli", "status", "--config", str(config)], check=True,
                   stdout=subprocess.DEVNULL)
    db = sqlite3.connect(data / "registry.sqlite3")
    issuer_id = db.execute("SELECT id FROM issuers WHERE name = 'ac-personnes'").fetchone()[0]
    for start in range(0, n, 100_000):
        ids = range(start + 1, min(n, start + 100_000) + 1)
        db.executemany("INSERT INTO certificates (id, issuer_id, serial_hex, status, revocation_time, reason, "
                       "serial_low, imported_at, updated_at, not_after) VALUES (?,?,?,?,?,?,?,?,?,?)",
                       [(i, issuer_id, format(SERIAL_BASE + i, "x"), "revoked", REVOKED_AT, "superseded",
                         (SERIAL_BASE + i) & 0xFFFFFFFF, 0, 0, NOT_AFTER) for i in ids])
        db.executemany("INSERT INTO crl_entries (issuer_id, certificate_id, not_after, serial_low, entry_der) "
                       "VALUES (?,?,?,?,?)", [(issuer_id, i, NOT_AFTER, (SERIAL_BASE + i) & 0xFFFFFFFF,
                                              der.revoked_entry(SERIAL_BASE + i, REVOKED_AT, 4)) for i in ids])
    db.commit()
    db.close()
    seconds, rss = measure([sys.executable, "-m", "directory.cli", "crl", "build", "--config", str(config),
                            "--issuer", "ac-personnes"])
    published = (data / "crl" / "ac-personnes.crl").read_bytes()
    started = time.monotonic()  # the self-check's entry walk (part of the build above), timed on its own
    check_entry_extensions(published)
    print(f"  entry check at {n:,} entries: {time.monotonic() - started:.2f} s", file=sys.stderr)
    return seconds, rss, len(published)


def openssl_side(kind: str, n: int, work: Path) -> tuple[float, float, int]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    key = work / "ca.key"
    if kind == "rsa":
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    else:
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
                       check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-new", "-x509", "-key", str(key), "-out", str(work / "ca.pem"), "-days",
                    "3650", "-subj", "/C=FR/O=ANNUAIRE SANTE DEMO/OU=IGC-SANTE DEMO/CN=AC SANTE PERSONNES DEMO",
                    "-addext", "subjectKeyIdentifier=hash"], check=True, capture_output=True)
    revoked = time.strftime("%y%m%d%H%M%SZ", time.gmtime(REVOKED_AT))
    expiry = time.strftime("%y%m%d%H%M%SZ", time.gmtime(NOT_AFTER))
    with open(work / "index.txt", "w") as index:
        for i in range(n):
            index.write(f"R\t{expiry}\t{revoked},superseded\t{SERIAL_BASE + i + 1:X}\tunknown\t/CN=holder {i}\n")
    (work / "index.txt.attr").write_text("unique_subject = no\n")
    (work / "crlnumber").write_text("01\n")
    (work / "openssl.cnf").write_text(f"""[ca]
default_ca = bench
[bench]
database = {work}/index.txt
crlnumber = {work}/crlnumber
certificate = {work}/ca.pem
private_key = {key}
default_md = sha256
default_crl_days = 7
crl_extensions = crl_ext
[crl_ext]
authorityKeyIdentifier = keyid
""")
    out = work / "ca.crl"
    # `openssl ca -gencrl` writes PEM; the DER size is taken afterwards with `openssl crl` (not timed)
    seconds, rss = measure(["openssl", "ca", "-gencrl", "-config", str(work / "openssl.cnf"), "-out", str(out)])
    der_out = work / "ca.der"
    subprocess.run(["openssl", "crl", "-in", str(out), "-outform", "DER", "-out", str(der_out)], check=True)
    return seconds, rss, der_out.stat().st_size


def main() -> int:
    rows = []
    for kind in ("rsa", "ec"):
        demo_dir = demo(f"hsm-{kind}", kind)
        for n in SIZES:
            ours = our_side(demo_dir, n, OUT / f"crl-{kind}-{n}")
            ref = openssl_side(kind, n, OUT / f"openssl-{kind}-{n}")
            rows.append((kind, n, ours, ref))
            print(f"{kind} {n}: ours {ours[0]:.2f}s {ours[1]:.0f}MB {ours[2]}B; openssl {ref[0]:.2f}s "
                  f"{ref[1]:.0f}MB {ref[2]}B", file=sys.stderr)
    print("| key | entries | annuaire s | openssl s | speed-up | annuaire peak RSS MB | openssl peak RSS MB | "
          "RSS ratio | annuaire bytes | openssl bytes | size diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, n, (s1, r1, b1), (s2, r2, b2) in rows:
        name = "RSA-2048" if kind == "rsa" else "P-256"
        print(f"| {name} | {n:,} | {s1:.2f} | {s2:.2f} | {s2 / s1:.1f}× | {r1:.0f} | {r2:.0f} | {r1 / r2:.2f} | "
              f"{b1:,} | {b2:,} | {100 * (b1 - b2) / b2:+.2f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
