"""The publication checker's cost: what it takes to look at every certificate once a day at 1,000,000.

The served checker's cost per certificate does not depend on how many there are (one OCSP exchange per
variant, an indexed registry read, a share of a batched directory search); what does is the CRL, parsed
completely once per published content. So:

1. against a served instance (its own 20,000-certificate demo, or ``--base``), cycles of the real
   checker (``PublicationChecker.cycle``) run every ``--interval`` seconds with the sample slice that
   ``--rate`` certificates a day needs (1,000,000 → 116 per 10 s cycle), for ``--duration`` seconds; CPU
   of the checker (its thread) and of the service (/proc, against an idle window of the same length);
2. the complete parse + signature check of a CRL of ``--crl-entries`` entries (100,000: a million
   certificates with 10% revoked), built by ``annuaire crl build``, timed in process.

    python -m bench.check                                   # both, figures for bench/RESULTS.md
    python -m bench.check --config C --base URL --pid PID --duration 5 --crl-entries 0 --json   # make test
    python -m bench.check --tiny --json   # make test: both, seconds-scale, the 60-certificate tiny demo
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.common import (
    OUT,
    TINY_CERTS,
    arguments,
    config_with_data_dir,
    demo,
    on_free_ports,
    tiny_demo,
    wait_http,
    wait_presigned,
)
from directory import der
from directory.check.checker import PublicationChecker
from directory.check.crl_probe import CrlProbe
from directory.config import load_config
from directory.publication import Target
from directory.runtime import open_config_registry

DAY = 86400
TINY = {"duration": 2.0, "interval": 1.0, "crl_entries": 200}


def process_cpu(pid: int) -> float:
    """utime + stime of a process (and its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # clock ticks (USER_HZ = 100 on Linux)


def run_cycles(config_path: Path, base: str, pid: int | None, duration: float, rate: float,
               interval: float) -> dict[str, object]:
    config = load_config(config_path)
    registry = open_config_registry(config)
    count = registry.counts()
    certificates = sum(sum(by.values()) for by in count.values())
    full_cycle = max(interval, certificates * DAY / rate)  # the slice per cycle that `rate` a day needs
    settings = replace(config.check, interval=int(interval), full_cycle=math.ceil(full_cycle), recent=0)
    checker = PublicationChecker(config, registry, settings, url=base)
    checker.cycle()  # warm-up: first CRL downloads and parses, connections (not counted)
    idle = _service_cpu(pid, duration) if pid else None
    stats = checker.stats
    cpu0, checked0, cycles0 = stats.cpu_seconds, dict(stats.checked), stats.cycles
    service0 = process_cpu(pid) if pid else 0.0
    findings = 0
    started = time.monotonic()
    while time.monotonic() - started < duration:
        cycle_start = time.monotonic()
        findings = len(checker.cycle().findings)
        time.sleep(max(0.0, interval - (time.monotonic() - cycle_start)))
    elapsed = time.monotonic() - started
    service = (process_cpu(pid) - service0) if pid else None
    cpu = stats.cpu_seconds - cpu0
    checked = {c: stats.checked[c] - checked0[c] for c in stats.checked}
    checker.close()
    registry.close()
    result: dict[str, object] = {
        "certificates": certificates, "rate_per_day": rate, "interval_s": interval,
        "slice_per_cycle": math.ceil(certificates * interval / settings.full_cycle),
        "seconds": round(elapsed, 1), "cycles": stats.cycles - cycles0, "checked": checked,
        "checker_cpu_s": round(cpu, 3), "checker_core_percent": round(100 * cpu / elapsed, 2),
        "checker_ms_per_certificate": round(1000 * cpu / max(1, checked["crl"]), 3),
        "findings": findings, "crl_parses": stats.crl_parses,
    }
    if pid and idle is not None and service is not None:
        result["service_cpu_idle_s"] = round(idle, 3)
        result["service_cpu_checked_s"] = round(service, 3)
        result["service_extra_core_percent"] = round(100 * (service - idle) / elapsed, 2)
    return result


def _service_cpu(pid: int, seconds: float) -> float:
    before = process_cpu(pid)
    time.sleep(seconds)
    return process_cpu(pid) - before


def crl_parse(entries: int, tiny: bool = False) -> dict[str, object]:
    """Build a CRL of ``entries`` entries with the real builder, then time the checker's complete parse."""
    demo_dir = tiny_demo("rsa") if tiny else demo("crl-rsa", "rsa")
    work = OUT / "check-crl"
    shutil.rmtree(work, ignore_errors=True)
    config_path = config_with_data_dir(demo_dir, work)
    subprocess.run([sys.executable, "-m", "directory.cli", "status", "--config", str(config_path)], check=True,
                   stdout=subprocess.DEVNULL)
    db = sqlite3.connect(work / "data" / "registry.sqlite3")
    issuer_id = db.execute("SELECT id FROM issuers WHERE name = 'ac-personnes'").fetchone()[0]
    revoked_at, not_after, base = 1_790_000_000, 1_900_000_000, 0x10000000
    rows = [(i, issuer_id, format(base + i, "x"), "revoked", revoked_at, "keyCompromise", (base + i) & 0xFFFFFFFF, 0,
             0, not_after) for i in range(1, entries + 1)]
    db.executemany("INSERT INTO certificates (id, issuer_id, serial_hex, status, revocation_time, reason, serial_low, "
                   "imported_at, updated_at, not_after) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
    entry_rows = [(issuer_id, r[0], not_after, r[6], der.revoked_entry(base + r[0], revoked_at, 1)) for r in rows]
    db.executemany("INSERT INTO crl_entries (issuer_id, certificate_id, not_after, serial_low, entry_der) "
                   "VALUES (?,?,?,?,?)", entry_rows)
    db.commit()
    db.close()
    subprocess.run([sys.executable, "-m", "directory.cli", "crl", "build", "--config", str(config_path), "--issuer",
                    "ac-personnes"], check=True, stdout=subprocess.DEVNULL)
    body = (work / "data" / "crl" / "ac-personnes.crl").read_bytes()
    issuer = load_config(config_path).issuer("ac-personnes")
    times = []
    for _ in range(3):
        cpu = time.process_time()
        parsed = CrlProbe._parse(issuer, "ac-personnes.crl", Target("full", "main", "ac-personnes.crl"), body, "")
        times.append(time.process_time() - cpu)
        assert len(parsed.entries) == entries
    return {"entries": entries, "bytes": len(body), "parse_cpu_s": round(sorted(times)[1], 3)}


def own_instance(duration: float, rate: float, interval: float, certificates: int,
                 tiny: bool = False) -> dict[str, object]:
    """A demo of ``certificates`` served by its own instance (the service and the checker: two processes)."""
    directory = tiny_demo("rsa") if tiny else demo(f"check-{certificates}", "rsa", certificates)
    config = directory / "annuaire.toml"
    text, base, _ = on_free_ports(config.read_text())
    if "[check]" not in text:  # the instance's own checker stays off: the one measured runs here
        text += "\n[check]\nenabled = false\n"
    config.write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "directory.cli", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(base + "/readyz")
        if tiny:
            wait_presigned(base, 0.9 * TINY_CERTS, poll=0.2, timeout=120)
        else:
            time.sleep(90)  # pre-signing and the first directory sync settle (persisted after the first run)
        return run_cycles(config, base, proc.pid, duration, rate, interval)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--config", help="the served instance's configuration (with --base)")
    parser.add_argument("--base", help="its public URL")
    parser.add_argument("--pid", type=int, help="its process id (CPU measured from /proc)")
    parser.add_argument("--duration", type=float, default=300)
    parser.add_argument("--rate", type=float, default=1_000_000, help="certificates to look at per day")
    parser.add_argument("--interval", type=float, default=10)
    parser.add_argument("--certificates", type=int, default=20000, help="size of the own demo (without --base)")
    parser.add_argument("--crl-entries", type=int, default=100_000)
    args = parser.parse_args()
    if args.tiny:
        vars(args).update(TINY)
    if args.base:
        summary = run_cycles(Path(args.config), args.base, args.pid, args.duration, args.rate, args.interval)
    else:
        summary = own_instance(args.duration, args.rate, args.interval, args.certificates, args.tiny)
    if args.crl_entries:
        crl = crl_parse(args.crl_entries, args.tiny)
        summary["crl"] = crl
        summary["crl_parse_core_percent_if_hourly"] = round(100 * float(crl["parse_cpu_s"]) * 24 / DAY, 3)  # type: ignore[arg-type]
    print(json.dumps(summary, indent=None if args.json else 1))
    return 0 if summary["findings"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
