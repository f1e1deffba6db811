"""CRL build: `annuaire crl build` vs `openssl ca -gencrl` (issue 15 §4), and the build inside `annuaire serve`.

    python -m bench.crl                                # 1,000,000 entries, RSA-2048, 3 runs of each (medians)
    python -m bench.crl --sizes 10000,1000000 --keys rsa,ec --runs 5
    python -m bench.crl --tiny                         # 2,000 entries, one run: the `make test` smoke run

Both sides list the same serials with the same revocation time and reason (superseded) and the same CRL
extensions (authorityKeyIdentifier, cRLNumber), sign with a key of the same type and size, and run as
separate processes on the same machine in the same run; wall time, CPU time and peak RSS are measured per
process (``os.wait4``). Ours includes Python start-up (byte-compiled first, as an installed package is),
config loading, HSM login, the self-check (parse back, signature verified, every entry walked and its
extensions parsed) and the atomic publication with fsync. "cold": no walk of an earlier build on disk
(the first build ever); "warm": the previous build's walk is there (every later build: runs of entries
with identical bytes are recognised by their SHA-256 and not walked again). The registry rows are inserted
beforehand (not timed). The in-service figure: `annuaire serve` on the same registry, a certificate revoked
through the admin API, the rebuild's time as the service logs it (build, sign, self-check, install).

stdout: one JSON object per (key, size) (the ratios in ``speedup_*`` and ``rss_ratio``), then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import directory
from bench.common import OUT, config_with_data_dir, demo, free_port
from directory import der

REVOKED_AT = 1_790_000_000  # 2026-09-21
NOT_AFTER = 1_900_000_000
SERIAL_BASE = 0x10000000  # 8 hex digits: openssl wants an even number
SPARE = 3  # good certificates the in-service run revokes, one rebuild each
ISSUER = "ac-personnes"
PUBLISHED = re.compile(r"published ac-personnes\.crl number \d+: (\d+) entries, \d+ bytes, ([\d.]+) s")


def measure(cmd: list[str]) -> dict[str, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) of one child process."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if status != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {err[-800:]}")
    return {"s": elapsed, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024}


def bench_config(demo_dir: Path, work: Path) -> Path:
    """The demo's configuration on a registry of its own, with ``ISSUER`` publishing only its full CRL (the
    same extensions as openssl's: no delta, so no freshestCRL), rebuilt 1 s after a revocation. The service
    keeps to its CRL work: no OCSP for ``ISSUER`` (pre-signing a million answers), no directory (copying each
    37 MB CRL into the CA's entry) and no publication checker (downloading it) would share the two cores
    with the build being timed."""
    config = config_with_data_dir(demo_dir, work)
    text = config.read_text()
    text, crl = re.subn(r'(name = "ac-personnes"\n(?:.*\n)*?)\[issuers\.crl\]\n(?:[a-z_]+ = .*\n)*',
                        r'\1[issuers.crl]\non_revocation_delay = 1\narchive = 1\n', text, count=1)
    text, ocsp = re.subn(r'\[issuers\.ocsp\]\nsigner_certificate = "[^"]*ocsp-ac-personnes\.pem"\n'
                         r'signer_key_label = "ocsp-ac-personnes"\n', "", text)
    text, ldap = re.subn(r'\[ldap\]\n(?:[a-z_]+ = .*\n)*\n', "", text)
    if crl != 1 or ocsp != 1 or ldap != 1:
        raise RuntimeError(f"the demo configuration changed shape: {config}")
    text = re.sub(r'(\[http\]\nlisten = )"127\.0\.0\.1:\d+"', rf'\1"127.0.0.1:{free_port()}"', text)
    text = re.sub(r'(\[admin\]\nlisten = )"127\.0\.0\.1:\d+"', rf'\1"127.0.0.1:{free_port()}"', text)
    config.write_text(text + "\n[check]\nenabled = false\n")
    return config


def setup_registry(config: Path, n: int) -> None:
    """The issuer, n revoked rows (their entries encoded as a revocation stores them), ``SPARE`` good ones."""
    data = config.parent / "data"
    subprocess.run([sys.executable, "-m", "directory.cli", "status", "--config", str(config)], check=True,
                   stdout=subprocess.DEVNULL)
    db = sqlite3.connect(data / "registry.sqlite3")
    issuer_id = db.execute("SELECT id FROM issuers WHERE name = ?", (ISSUER,)).fetchone()[0]
    columns = ("INSERT INTO certificates (id, issuer_id, serial_hex, status, revocation_time, reason, serial_low, "
               "imported_at, updated_at, not_after) VALUES (?,?,?,?,?,?,?,?,?,?)")
    for start in range(0, n, 100_000):
        ids = range(start + 1, min(n, start + 100_000) + 1)
        db.executemany(columns, [(i, issuer_id, format(SERIAL_BASE + i, "x"), "revoked", REVOKED_AT, "superseded",
                                  (SERIAL_BASE + i) & 0xFFFFFFFF, 0, 0, NOT_AFTER) for i in ids])
        db.executemany("INSERT INTO crl_entries (issuer_id, certificate_id, not_after, serial_low, entry_der) "
                       "VALUES (?,?,?,?,?)", [(issuer_id, i, NOT_AFTER, (SERIAL_BASE + i) & 0xFFFFFFFF,
                                              der.revoked_entry(SERIAL_BASE + i, REVOKED_AT, 4)) for i in ids])
    db.executemany(columns, [(i, issuer_id, format(SERIAL_BASE + i, "x"), "good", None, None,
                              (SERIAL_BASE + i) & 0xFFFFFFFF, 0, 0, NOT_AFTER) for i in range(n + 1, n + 1 + SPARE)])
    db.commit()
    db.close()


def our_side(config: Path, runs: int) -> dict[str, Any]:
    """``runs`` cold builds (the walk file removed before each), then ``runs`` warm ones."""
    crl_dir = config.parent / "data" / "crl"
    cmd = [sys.executable, "-m", "directory.cli", "crl", "build", "--config", str(config), "--issuer", ISSUER]
    cold, warm = [], []
    for _ in range(runs):
        for walk in crl_dir.glob(".*.walk"):
            walk.unlink()
        cold.append(measure(cmd))
    for _ in range(runs):
        warm.append(measure(cmd))
    size = (crl_dir / f"{ISSUER}.crl").stat().st_size
    return {"cold": cold, "warm": warm, "bytes": size}


def in_service(config: Path, n: int, runs: int) -> list[float]:
    """Seconds of ``runs`` rebuilds inside `annuaire serve`, each after a revocation, from the service's log."""
    text = config.read_text()
    base = "http://" + re.search(r'\[http\]\nlisten = "([^"]+)"', text).group(1)  # type: ignore[union-attr]
    admin = "http://" + re.search(r'\[admin\]\nlisten = "([^"]+)"', text).group(1)  # type: ignore[union-attr]
    token = Path(re.search(r'token_file = "([^"]+)"', text).group(1)).read_text().strip()  # type: ignore[union-attr]
    proc = subprocess.Popen([sys.executable, "-m", "directory.cli", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr or ()], daemon=True).start()
    seconds = []
    try:
        deadline = time.monotonic() + 300
        while not _answers(base + "/healthz"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("`annuaire serve` did not start: " + "".join(list(lines.queue)[-20:]))
            time.sleep(0.2)
        for k in range(min(runs, SPARE)):
            body = json.dumps({"issuer": ISSUER, "serial": format(SERIAL_BASE + n + 1 + k, "x"),
                               "reason": "superseded"}).encode()
            request = urllib.request.Request(f"{admin}/api/v1/revocations", body, method="POST", headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                if answer.status != 201:
                    raise RuntimeError(f"revocation answered {answer.status}")
            deadline = time.monotonic() + 300
            while True:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                found = PUBLISHED.search(line)
                if found and int(found.group(1)) == n + 1 + k:
                    seconds.append(float(found.group(2)))
                    break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    return seconds


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except Exception:
        return False


def subject_of(certificate: Path) -> str:
    """The certificate's subject in `openssl req -subj` form (openssl's CA gets the same issuer name as ours)."""
    from cryptography import x509

    name = x509.load_pem_x509_certificate(certificate.read_bytes()).subject
    return "".join(f"/{a.rfc4514_attribute_name}={a.value}" for rdn in name.rdns for a in rdn)


def openssl_side(kind: str, n: int, work: Path, runs: int, subject: str) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    key = work / "ca.key"
    if kind == "rsa":
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    else:
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
                       check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-new", "-x509", "-key", str(key), "-out", str(work / "ca.pem"), "-days",
                    "3650", "-subj", subject,
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
    cmd = ["openssl", "ca", "-gencrl", "-config", str(work / "openssl.cnf"), "-out", str(out)]
    results = [measure(cmd) for _ in range(runs)]
    der_out = work / "ca.der"
    subprocess.run(["openssl", "crl", "-in", str(out), "-outform", "DER", "-out", str(der_out)], check=True)
    return {"runs": results, "bytes": der_out.stat().st_size}


def verify_with_openssl(config: Path, demo_dir: Path) -> None:
    """`openssl crl -verify` on the CRL we published (the bench's output is a real CRL)."""
    crl = config.parent / "data" / "crl" / f"{ISSUER}.crl"
    subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(crl), "-noout", "-CAfile",
                    str(demo_dir / "ca" / f"{ISSUER}.pem")], check=True, capture_output=True)


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def one(kind: str, n: int, runs: int, service_runs: int) -> dict[str, Any]:
    demo_dir = demo(f"hsm-{kind}", kind)
    work = OUT / f"crl-{kind}-{n}"
    shutil.rmtree(work, ignore_errors=True)
    config = bench_config(demo_dir, work)
    setup_registry(config, n)
    ours = our_side(config, runs)
    verify_with_openssl(config, demo_dir)
    ref = openssl_side(kind, n, OUT / f"openssl-{kind}-{n}", runs, subject_of(demo_dir / "ca" / f"{ISSUER}.pem"))
    service = in_service(config, n, service_runs) if service_runs else []
    ref_s, ref_rss = median(ref["runs"], "s"), max(r["rss"] for r in ref["runs"])
    cold_s, warm_s = median(ours["cold"], "s"), median(ours["warm"], "s")
    rss = max(r["rss"] for r in ours["cold"] + ours["warm"])
    return {
        "bench": "crl", "key": "RSA-2048" if kind == "rsa" else "P-256", "entries": n, "runs": runs,
        "annuaire_cold_s": round(cold_s, 3), "annuaire_warm_s": round(warm_s, 3),
        "annuaire_cold_cpu_s": round(median(ours["cold"], "cpu"), 3),
        "annuaire_warm_cpu_s": round(median(ours["warm"], "cpu"), 3),
        "annuaire_peak_rss_mb": round(rss, 1), "annuaire_bytes": ours["bytes"],
        "service_build_s": [round(s, 3) for s in service],
        "service_build_median_s": round(statistics.median(service), 3) if service else None,
        "openssl_s": round(ref_s, 3), "openssl_cpu_s": round(median(ref["runs"], "cpu"), 3),
        "openssl_peak_rss_mb": round(ref_rss, 1), "openssl_bytes": ref["bytes"],
        "speedup_cold": round(ref_s / cold_s, 2), "speedup_warm": round(ref_s / warm_s, 2),
        "speedup_service": round(ref_s / statistics.median(service), 2) if service else None,
        "rss_ratio": round(rss / ref_rss, 3),
        # CPU seconds (user + system) ratios: steadier than wall time when the machine is shared
        "cpu_speedup_cold": round(median(ref["runs"], "cpu") / median(ours["cold"], "cpu"), 2),
        "cpu_speedup_warm": round(median(ref["runs"], "cpu") / median(ours["warm"], "cpu"), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=os.environ.get("BENCH_CRL_SIZES", "1000000"))
    parser.add_argument("--keys", default="rsa", help="rsa, ec or rsa,ec")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side (medians)")
    parser.add_argument("--service-runs", type=int, default=SPARE, help="rebuilds inside `annuaire serve` (0: none)")
    parser.add_argument("--tiny", action="store_true", help="2,000 entries, one run of each (a smoke run)")
    args = parser.parse_args(argv)
    sizes = [2000] if args.tiny else [int(x) for x in args.sizes.split(",")]
    runs, service_runs = (1, 1) if args.tiny else (args.runs, args.service_runs)
    # as installed: byte-compiled (PYTHONDONTWRITEBYTECODE would otherwise make every run compile from source)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(directory.__file__).parent)], check=True,
                   stdout=subprocess.DEVNULL)
    rows = []
    for kind in args.keys.split(","):
        for n in sizes:
            row = one(kind, n, runs, service_runs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| key | entries | annuaire cold s | warm s | in service s | openssl s | speed-up cold / warm / service "
          "| annuaire peak RSS MB | openssl peak RSS MB | RSS ratio | annuaire bytes | openssl bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        service = r["service_build_median_s"]
        print(f"| {r['key']} | {r['entries']:,} | {r['annuaire_cold_s']:.2f} | {r['annuaire_warm_s']:.2f} | "
              f"{service if service is not None else '-'} | {r['openssl_s']:.2f} | {r['speedup_cold']:.1f}× / "
              f"{r['speedup_warm']:.1f}× / {r['speedup_service'] or '-'}× | {r['annuaire_peak_rss_mb']:.0f} | "
              f"{r['openssl_peak_rss_mb']:.0f} | {r['rss_ratio']:.2f} | {r['annuaire_bytes']:,} | "
              f"{r['openssl_bytes']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
