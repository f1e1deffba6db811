"""Bulk directory load: `annuaire ldap export --ldif` + `slapadd -q` against `ldapadd` of the same LDIF.

Full size: the 200,000-certificate registry of bench/ldap.py (bench/out/ldap-run: generated and imported
once, ~13 min here, then reused; ``BENCH_LDAP_CERTIFICATES`` sets another size; 100,000 entries).
``--tiny``: an init-demo of 60 certificates in a temporary folder (make test).
Same run, same slapd configuration (deploy/slapd/provider.conf, as the managed slapd writes it), each
database fresh, each step timed until slapd listens on the loaded database:
1. the export to a file, as its own process: time, peak RSS (the file feeds steps 2 and 4);
2. ``slapadd -q -w -l FILE``, ownership to slapd's user, slapd started: "export, then slapadd";
3. the documented path, ``annuaire ldap export --ldif --mark-synced | slapadd -q -w``, ownership, start: the
   export and slapadd run at once (two cores); the headline ratio;
4. ``ldapadd -f FILE`` into another fresh, running slapd (as its rootdn: the database is empty);
5. checks on step 3's directory: verify finds no drift, then a full pass (the service's first) writes nothing.
Prints a markdown table, then one JSON line (ratio = ldapadd / piped load; ratio_sequential = ldapadd /
(export + slapadd); ``*_loaded_s``: until slapadd exits, before ownership and start; the 1-minute load
average before and after, the machine being shared).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from directory.config import Config, load_config
from directory.ldap.managed import ensure_skeleton, managed_slapd
from directory.ldap.slapd import Slapd, unprivileged_user
from directory.ldap.sync import DirectorySync
from directory.runtime import open_config_registry
from tests.conftest import ANNUAIRE, free_port


def directory_config(base: Path, work: Path, name: str) -> tuple[Config, Slapd]:
    """A managed slapd of its own (folder, free port) on ``base``'s registry and published CRLs; not started."""
    source = load_config(base)
    text = base.read_text()
    if "[registry]" not in text:
        registry = f"sqlite:///{source.data_dir / 'registry.sqlite3'}"
        text = text.replace("[hsm]", f'[registry]\nurl = "{registry}"\n\n[hsm]', 1)
    text = re.sub(r'"ldap://127\.0\.0\.1:\d+"', f'"ldap://127.0.0.1:{free_port()}"', text)
    text = re.sub(r'data_dir = "[^"]*"', f'data_dir = "{work / name}"', text)
    for rel in ("hsm/pin", "hsm/softhsm2.conf", "secrets/ldap-password", "secrets/admin-token"):
        text = text.replace(f'"{rel}"', f'"{base.parent / rel}"')
    text = text.replace('certificate = "ca/', f'certificate = "{base.parent}/ca/')
    text = text.replace('file = "pc/', f'file = "{base.parent}/pc/')
    subprocess.run(["rm", "-rf", str(work / name)], check=True)
    (work / name).mkdir(parents=True)
    if (source.data_dir / "crl").is_dir():
        (work / name / "crl").symlink_to(source.data_dir / "crl")
    path = work / f"{name}.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.registry_location() == source.registry_location()
    return config, managed_slapd(config)


CPU: dict[str, float] = {}  # CPU seconds (user + system) by step: the cost, whatever else runs on the machine


def export(config: Path, target: Path) -> tuple[float, float, dict[str, object]]:
    """(seconds, peak RSS in MB, report) of `annuaire ldap export --ldif -o FILE` as a process of its own."""
    started = time.monotonic()
    proc = subprocess.Popen([*ANNUAIRE, "ldap", "export", "--ldif", "--json", "-c", str(config), "-o", str(target)],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    rss = _reap(proc, "export", "export")
    return time.monotonic() - started, rss, json.loads(out)


def _reap(proc: subprocess.Popen[bytes], what: str, step: str) -> float:
    """Wait for ``proc``; its CPU time added to ``CPU[step]``; its own peak RSS in MB."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode})")
    CPU[step] = CPU.get(step, 0.0) + usage.ru_utime + usage.ru_stime
    return usage.ru_maxrss / 1024


def _slapadd(slapd: Slapd, source: Path | None) -> subprocess.Popen[bytes]:
    """slapadd -q -w (as deploy/README.md's bulk load: -w writes the suffix's contextCSN) into the stopped,
    empty database, from a file or (None) from its standard input."""
    slapd.write_config()
    source_args = ["-l", str(source)] if source else []
    return subprocess.Popen(["slapadd", "-q", "-w", "-f", slapd.conf_file.name, *source_args],
                            stdin=subprocess.PIPE if source is None else subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=slapd.config.directory)


LOADED: dict[str, float] = {}  # seconds from a step's start until slapadd exits (before ownership and start)


def _own_and_start(slapd: Slapd, proc: subprocess.Popen[bytes], step: str, started: float) -> None:
    assert proc.stderr is not None
    errors = proc.stderr.read()
    try:
        _reap(proc, "slapadd", step)
    except RuntimeError:
        raise RuntimeError(f"slapadd: {errors[-1000:].decode(errors='replace')}") from None
    LOADED[step] = time.monotonic() - started
    user = unprivileged_user()
    if user:  # slapadd ran as root: its files go to the user slapd runs as
        subprocess.run(["chown", "-R", f"{user}:{user}", str(slapd.config.directory / "data")], check=True)
    slapd.start()


def load_file(slapd: Slapd, ldif: Path) -> float:
    """slapadd -q -w of the file, ownership to slapd's user, slapd started (seconds, until it listens)."""
    started = time.monotonic()
    _own_and_start(slapd, _slapadd(slapd, ldif), "slapadd", started)
    return time.monotonic() - started


def load_piped(config: Config, slapd: Slapd) -> tuple[float, float]:
    """`annuaire ldap export --ldif --mark-synced | slapadd -q -w`, ownership, start: (seconds, export's RSS)."""
    started = time.monotonic()
    load = _slapadd(slapd, None)
    proc = subprocess.Popen([*ANNUAIRE, "ldap", "export", "--ldif", "--mark-synced", "-c", str(config.path)],
                            stdout=load.stdin, stderr=subprocess.DEVNULL)
    assert load.stdin is not None
    load.stdin.close()  # the export's copy is the only writer left: slapadd sees the end when it exits
    rss = _reap(proc, "export | slapadd", "piped")
    _own_and_start(slapd, load, "piped", started)
    return time.monotonic() - started, rss


def _slapd_cpu(slapd: Slapd) -> float:
    """CPU seconds slapd has used so far (/proc: utime + stime)."""
    assert slapd.process is not None
    fields = Path(f"/proc/{slapd.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ldapadd(slapd: Slapd, ldif: Path, work: Path) -> float:
    """ldapadd -f of the same file into a fresh running slapd, as its rootdn (the database is empty); its CPU
    and slapd's while it runs go to ``CPU["ldapadd"]``."""
    slapd.start()
    secret = work / "rootpw"
    secret.touch(mode=0o600)
    secret.write_text(slapd.config.root_password)
    before = _slapd_cpu(slapd)
    started = time.monotonic()
    proc = subprocess.Popen(["ldapadd", "-x", "-H", slapd.config.url, "-D", slapd.config.root_dn, "-y", str(secret),
                             "-f", str(ldif)], stdout=subprocess.DEVNULL)
    try:
        _reap(proc, "ldapadd", "ldapadd")
    finally:
        secret.unlink()
    seconds = time.monotonic() - started
    CPU["ldapadd"] += _slapd_cpu(slapd) - before
    return seconds


def _load_average() -> float:
    """The machine's 1-minute load average (the runs share its two cores with whatever else runs)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def run(base: Path, work: Path) -> dict[str, object]:
    load_before = _load_average()
    ldif = work / "export.ldif"
    _, from_file = directory_config(base, work, "from-file")
    piped_config, piped = directory_config(base, work, "piped")
    _, online = directory_config(base, work, "ldapadd")
    try:
        export_s, export_rss, report = export(piped_config.path, ldif)
        slapadd_s = load_file(from_file, ldif)
        from_file.stop()
        piped_s, piped_rss = load_piped(piped_config, piped)
        ldapadd_s = ldapadd(online, ldif, work)
        online.stop()
        assert piped_config.ldap is not None
        ensure_skeleton(piped, piped_config.ldap)  # the bind entry, as `annuaire serve` adds it at start
        registry = open_config_registry(piped_config)
        try:
            verify = DirectorySync(piped_config, registry).verify()
            takeover = DirectorySync(piped_config, registry).full()
        finally:
            registry.close()
    finally:
        for slapd in (from_file, piped, online):
            slapd.stop()
    sequential = export_s + slapadd_s
    return {"entries": report["entries"], "certificates": report["certificates"],
            "ldif_mb": round(int(report["bytes"]) / 1e6, 1),  # type: ignore[call-overload]
            "export_s": round(export_s, 2), "export_rss_mb": round(max(export_rss, piped_rss)),
            "slapadd_s": round(slapadd_s, 2), "sequential_s": round(sequential, 2), "piped_s": round(piped_s, 2),
            "slapadd_loaded_s": round(LOADED["slapadd"], 2), "piped_loaded_s": round(LOADED["piped"], 2),
            "ldapadd_s": round(ldapadd_s, 2), "ratio": round(ldapadd_s / piped_s, 2),
            "ratio_sequential": round(ldapadd_s / sequential, 2),
            "cpu_export_s": round(CPU["export"], 2), "cpu_slapadd_s": round(CPU["slapadd"], 2),
            "cpu_piped_s": round(CPU["piped"], 2), "cpu_ldapadd_s": round(CPU["ldapadd"], 2),
            "cpu_ratio": round(CPU["ldapadd"] / CPU["piped"], 2),
            "verify_drift": verify.drift.total(), "takeover_writes": takeover.writes(),
            "takeover_entries_read": takeover.entries_read,
            "load_average": [load_before, _load_average()]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="an init-demo of 60 certificates (make test)")
    args = parser.parse_args()
    if args.tiny:
        with tempfile.TemporaryDirectory(prefix="bench-ldif-") as tmp:
            work = Path(tmp)
            subprocess.run([*ANNUAIRE, "init-demo", str(work / "demo"), "--certs", "60",
                            "--key-type", "ec", "--http-port", str(free_port()), "--ldap-port", str(free_port())],
                           check=True, capture_output=True)
            os.environ["SOFTHSM2_CONF"] = str(work / "demo" / "hsm" / "softhsm2.conf")
            figures = run(work / "demo" / "annuaire.toml", work)
    else:
        from bench.common import OUT
        from bench.ldap import registry_with_certificates

        base, _ = registry_with_certificates(OUT / "ldap-run")
        figures = run(base, OUT / "ldif-run")
    f = figures
    print(f"| `annuaire ldap export --ldif -o FILE` ({f['entries']:,} entries, {f['certificates']:,} certificates, "
          f"{f['ldif_mb']} MB) | {f['export_s']} s | peak RSS {f['export_rss_mb']} MB |")
    print(f"| `slapadd -q -w -l FILE` + ownership + slapd start | {f['slapadd_s']} s | |")
    print(f"| export, then slapadd | {f['sequential_s']} s | {f['ratio_sequential']}× `ldapadd` |")
    print(f"| `annuaire ldap export --ldif --mark-synced \\| slapadd -q -w` + ownership + start | {f['piped_s']} s | "
          f"{f['ratio']}× `ldapadd` |")
    print(f"| (slapadd done: from the file {f['slapadd_loaded_s']} s, piped {f['piped_loaded_s']} s; the rest is "
          f"ownership and slapd's start) | | |")
    print(f"| `ldapadd -f FILE` into a running slapd (rootdn) | {f['ldapadd_s']} s | 1.00× |")
    print(f"| CPU (user + system): export {f['cpu_export_s']} s, slapadd {f['cpu_slapadd_s']} s; piped "
          f"{f['cpu_piped_s']} s; ldapadd + slapd {f['cpu_ldapadd_s']} s | ratio {f['cpu_ratio']}× in CPU |")
    print(f"| after the piped load: verify drift {f['verify_drift']}, full pass writes {f['takeover_writes']} "
          f"({f['takeover_entries_read']:,} entries read) | | |")
    print(f"| load average (1 min) before and after: {f['load_average']} | | |")
    print(json.dumps({"bench": "ldif", "tiny": args.tiny, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
