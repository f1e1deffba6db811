"""Bulk directory load: `annuaire ldap export --ldif` + `slapadd -q` against `ldapadd` of the same LDIF.

Full size: the 200,000-certificate registry of bench/ldap.py (bench/out/ldap-run: generated and imported
once, ~107,000 entries). ``--tiny``: an init-demo of 60 certificates in a temporary folder (make test).
Same run, same slapd configuration (deploy/slapd/provider.conf, as the managed slapd writes it):
1. the export, as its own process (``--mark-synced``, as the procedure of deploy/README.md): time, peak RSS;
2. ``slapadd -q`` of the file into a fresh, stopped database, ownership to slapd's user, slapd started
   (until it listens): the bulk side is export + slapadd + start;
3. ``ldapadd -f`` of the same file into another fresh, running slapd (as its rootdn: the database is empty);
4. checks: verify on the bulk-loaded directory finds no drift, a full pass then writes nothing.
Prints a markdown table, then one JSON line (ratio = ldapadd time / bulk side).
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
from tests.conftest import free_port


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


def export(config: Path, target: Path) -> tuple[float, float, dict[str, object]]:
    """(seconds, peak RSS in MB, report) of `annuaire ldap export --ldif --mark-synced` as a process."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "directory.cli", "ldap", "export", "--ldif", "--mark-synced",
                             "--json", "-c", str(config), "-o", str(target)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"export failed ({proc.returncode})")
    return seconds, usage.ru_maxrss / 1024, json.loads(out)


def bulk_load(slapd: Slapd, ldif: Path) -> float:
    """slapadd -q into the stopped, empty database, ownership to slapd's user, slapd started (seconds)."""
    started = time.monotonic()
    slapd.write_config()
    result = subprocess.run(["slapadd", "-q", "-f", slapd.conf_file.name, "-l", str(ldif)], capture_output=True,
                            text=True, cwd=slapd.config.directory)
    if result.returncode != 0:
        raise RuntimeError(f"slapadd: {result.stderr[-1000:]}")
    user = unprivileged_user()
    if user:
        subprocess.run(["chown", "-R", f"{user}:{user}", str(slapd.config.directory / "data")], check=True)
    slapd.start()
    return time.monotonic() - started


def ldapadd(slapd: Slapd, ldif: Path, work: Path) -> float:
    """ldapadd -f of the same file into a fresh running slapd, as its rootdn (the database is empty)."""
    slapd.start()
    secret = work / "rootpw"
    secret.write_text(slapd.config.root_password)
    started = time.monotonic()
    result = subprocess.run(["ldapadd", "-x", "-H", slapd.config.url, "-D", slapd.config.root_dn, "-y", str(secret),
                             "-f", str(ldif)], capture_output=True, text=True)
    seconds = time.monotonic() - started
    secret.unlink()
    if result.returncode != 0:
        raise RuntimeError(f"ldapadd: {result.stderr[-1000:]}")
    return seconds


def run(base: Path, work: Path) -> dict[str, object]:
    ldif = work / "export.ldif"
    bulk_config, bulk = directory_config(base, work, "bulk")
    _, online = directory_config(base, work, "ldapadd")
    try:
        export_s, export_rss, report = export(bulk_config.path, ldif)
        slapadd_s = bulk_load(bulk, ldif)
        ldapadd_s = ldapadd(online, ldif, work)
        online.stop()
        assert bulk_config.ldap is not None
        ensure_skeleton(bulk, bulk_config.ldap)  # the bind entry, as `annuaire serve` adds it at start
        registry = open_config_registry(bulk_config)
        try:
            verify = DirectorySync(bulk_config, registry).verify()
            takeover = DirectorySync(bulk_config, registry).full()
        finally:
            registry.close()
    finally:
        bulk.stop()
        online.stop()
    bulk_s = export_s + slapadd_s
    return {"entries": report["entries"], "certificates": report["certificates"],
            "ldif_mb": round(int(report["bytes"]) / 1e6, 1),  # type: ignore[call-overload]
            "export_s": round(export_s, 2), "export_rss_mb": round(export_rss),
            "slapadd_and_start_s": round(slapadd_s, 2),
            "bulk_s": round(bulk_s, 2), "ldapadd_s": round(ldapadd_s, 2), "ratio": round(ldapadd_s / bulk_s, 2),
            "verify_drift": verify.drift.total(), "takeover_writes": takeover.writes(),
            "takeover_entries_read": takeover.entries_read}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="an init-demo of 60 certificates (make test)")
    args = parser.parse_args()
    if args.tiny:
        with tempfile.TemporaryDirectory(prefix="bench-ldif-") as tmp:
            work = Path(tmp)
            subprocess.run([sys.executable, "-m", "directory.cli", "init-demo", str(work / "demo"), "--certs", "60",
                            "--key-type", "ec", "--http-port", str(free_port()), "--ldap-port", str(free_port())],
                           check=True, capture_output=True)
            os.environ["SOFTHSM2_CONF"] = str(work / "demo" / "hsm" / "softhsm2.conf")
            figures = run(work / "demo" / "annuaire.toml", work)
    else:
        from bench.common import OUT
        from bench.ldap import registry_with_certificates

        base, _ = registry_with_certificates(OUT / "ldap-run")
        figures = run(base, OUT / "ldif-run")
    print(f"| `annuaire ldap export --ldif` ({figures['entries']:,} entries, {figures['certificates']:,} certificates, "
          f"{figures['ldif_mb']} MB) | {figures['export_s']} s | peak RSS {figures['export_rss_mb']} MB |")
    print(f"| `slapadd -q` + ownership + slapd start | {figures['slapadd_and_start_s']} s | |")
    print(f"| bulk load: export + slapadd | {figures['bulk_s']} s | {figures['ratio']}× `ldapadd` |")
    print(f"| `ldapadd -f` of the same LDIF into a running slapd | {figures['ldapadd_s']} s | 1.00× |")
    print(f"| after the load: verify drift {figures['verify_drift']}, full pass writes {figures['takeover_writes']} "
          f"({figures['takeover_entries_read']:,} entries read) | | |")
    print(json.dumps({"bench": "ldif", "tiny": args.tiny, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
