"""Helpers shared by the benchmarks: a demo built on demand under bench/out, peak RSS, the arguments every
script takes (``--tiny``, ``--json``) and its summary line.

Every script prints its human table (markdown rows) and then, as the last line of stdout, one JSON object
with its figures; ``--json`` leaves the JSON line alone on stdout. ``--tiny`` is the seconds-scale run
`make test` does (tests/test_benches.py) so that a change breaking a benchmark fails CI. ``BENCH_OUT``
moves the work folder (bench/out) elsewhere, e.g. a temp folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

OUT = Path(os.environ.get("BENCH_OUT") or Path(__file__).resolve().parent / "out")
TINY_CERTS = 60  # end-entity certificates of the demos --tiny runs share


def demo(name: str, key_type: str, certs: int = 0) -> Path:
    """An init-demo directory under bench/out (built once, reused)."""
    directory = OUT / name
    if not (directory / "annuaire.toml").exists():
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "directory.cli", "init-demo", str(directory), "--certs", str(certs),
                        "--key-type", key_type], check=True, stdout=sys.stderr)
    return directory


def tiny_demo(key_type: str) -> Path:
    """The one demo of each key type every ``--tiny`` run shares: one build, not one a script."""
    return demo(f"tiny-{key_type}", key_type, TINY_CERTS)


def peak_rss_mb_children() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def config_with_data_dir(demo_dir: Path, work: Path) -> Path:
    """``work/annuaire.toml``: the demo's CA files, token and secrets, with a registry of its own in ``work/data``."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    text = (demo_dir / "annuaire.toml").read_text().replace('data_dir = "data"', f'data_dir = "{data}"')
    for rel in ("hsm/pin", "hsm/softhsm2.conf", "secrets/ldap-password", "secrets/admin-token"):
        text = text.replace(f'"{rel}"', f'"{demo_dir / rel}"')
    config = work / "annuaire.toml"
    text = text.replace('file = "pc/', f'file = "{demo_dir}/pc/')  # the CAs' certification policy documents
    config.write_text(text.replace('certificate = "ca/', f'certificate = "{demo_dir}/ca/'))
    return config


def presigned(base: str) -> float:
    """Pre-signed OCSP responses a served instance holds (its /metrics, every issuer)."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(m) for m in re.findall(r'^annuaire_ocsp_cached_responses\{[^}]*\} ([\d.e+]+)$', text, re.M))


def wait_presigned(base: str, expect: float, poll: float = 2.0, timeout: float = 1800) -> None:
    """Until the instance at ``base`` holds ``expect`` pre-signed responses (its start-up pre-signing done)."""
    deadline = time.monotonic() + timeout
    while presigned(base) < expect:
        if time.monotonic() > deadline:
            raise RuntimeError(f"pre-signing did not reach {expect:.0f} responses at {base}")
        time.sleep(poll)


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """The parser every script starts from: ``--tiny`` and ``--json``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="seconds-scale run (a few items, short durations): what `make test` runs")
    parser.add_argument("--json", action="store_true", help="stdout: the JSON summary alone, on one line")
    return parser


def report(summary: dict[str, object], args: argparse.Namespace, lines: list[str] | tuple[str, ...] = ()) -> None:
    """The human lines (unless ``--json``), then the summary as one JSON line: always stdout's last line."""
    if not args.json:
        for line in lines:
            print(line)
    print(json.dumps(summary), flush=True)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of process ``pid`` and of its children still running (the service's
    serving processes: the kernel adds a child's time to its parent's only once it is waited for), threads
    included."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moved(NamedTuple):
    """A configuration moved to free ports, and the base URLs of its public and admin listeners."""

    text: str
    base: str
    admin: str


def on_free_ports(text: str, http_extra: str = "") -> Moved:
    """A demo configuration moved to free loopback ports: the public listener (``base_url`` follows it, and
    ``http_extra`` lines are added under it), the admin listener and the LDAP URL, where the text has them, so
    that runs side by side, or a slapd left over, never meet."""
    port, admin_port = free_port(), free_port()
    listen = f'listen = "127.0.0.1:{port}"' + (f"\n{http_extra}" if http_extra else "")
    text = re.sub(r'listen = "127\.0\.0\.1:\d+"', listen, text, count=1)
    text = re.sub(r'base_url = "http://127\.0\.0\.1:\d+"', f'base_url = "http://127.0.0.1:{port}"', text)
    text = re.sub(r'(\[admin\]\nlisten = )"127\.0\.0\.1:\d+"', rf'\1"127.0.0.1:{admin_port}"', text)
    text = re.sub(r'"ldap://127\.0\.0\.1:\d+"', f'"ldap://127.0.0.1:{free_port()}"', text)
    return Moved(text, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}")


def wait_http(url: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer")


def fill_presigned(demo_dir: Path, count: int) -> int:
    """At least ``count`` certificates of ac-personnes with a persisted answer each (signed by the configured
    responder's key id, so that the service reloads them); returns how many answers the registry holds."""
    import sqlite3

    from cryptography import x509

    from directory import cert_id
    from ocsp import response as resp

    db = sqlite3.connect(demo_dir / "data" / "registry.sqlite3")
    have = db.execute("SELECT COUNT(*) FROM ocsp_responses").fetchone()[0]
    if have >= count:
        db.close()
        return have
    issuer_id, issuer_der = db.execute("SELECT id, certificate_der FROM issuers WHERE name = 'ac-personnes'").fetchone()
    issuer = x509.load_der_x509_certificate(issuer_der)
    responder = x509.load_pem_x509_certificate((demo_dir / "ca" / "ocsp-ac-personnes.pem").read_bytes())
    key_hash = cert_id.key_hash(responder, "sha1")
    prefix = cert_id.prefix("sha1", *cert_id.issuer_hashes(issuer, "sha1"))
    now = int(time.time())
    algorithm = bytes.fromhex("300d06092a864886f70d01010b0500")

    def body(serial: int) -> bytes:
        single = resp.single_response(resp.SingleStatus(cert_id.encode(prefix, serial), "good"), now, now + 4 * 86400)
        return resp.signed_part(resp.response_data(key_hash, now, [single], None, False), algorithm, bytes(256))

    for start in range(0, count, 100_000):
        rows = range(start, min(count, start + 100_000))
        db.executemany("INSERT OR IGNORE INTO certificates (issuer_id, serial_hex, status, imported_at, updated_at,"
                       " serial_low, der) VALUES (?, ?, 'good', ?, ?, ?, x'00')",
                       [(issuer_id, format(0x10000000 + i, "x"), now - 10, now - 10, i) for i in rows])
        db.executemany("INSERT OR REPLACE INTO ocsp_responses VALUES (?, ?, 'sha1', ?, ?, ?)",
                       [(issuer_id, format(0x10000000 + i, "x"), now, now + 4 * 86400, body(0x10000000 + i))
                        for i in rows])
        db.commit()
    have = db.execute("SELECT COUNT(*) FROM ocsp_responses").fetchone()[0]
    db.close()
    return have
