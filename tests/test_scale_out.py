"""Two `annuaire serve` nodes on one PostgreSQL registry: one builds each issuer's CRLs, both serve them;
CRL numbers never repeat under concurrent builders; a revocation made anywhere is in both nodes' OCSP
answers within a second (LISTEN/NOTIFY); the builder SIGKILLed is replaced within the lease check."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from directory.crl.service import LEASE_CHECK
from tests.conftest import ROOT, run_cli
from tests.served import http, serve


def _node_config(demo: Path, pg_url: str, name: str) -> Path:
    """The demo's configuration for one node: the shared registry, its own data directory, no directory
    (LDAP replication is tested on its own) and no admin listener."""
    text = demo.read_text()
    text = text[:text.index("[ldap]")] + text[text.index("[[issuers]]"):]
    text = text.replace('data_dir = "data"', f'data_dir = "node-{name}"')
    text = text.replace("[http]", f'[registry]\nurl = "{pg_url}"\n\n[http]', 1)
    path = demo.parent / f"node-{name}.toml"
    path.write_text(text)
    return path


def _ocsp_status(base: str, demo: Path, entry: dict) -> str:
    cert = x509.load_pem_x509_certificate((demo.parent / "certs" / entry["file"]).read_bytes())
    issuer = x509.load_pem_x509_certificate((demo.parent / "ca" / f"{entry['issuer']}.pem").read_bytes())
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    path = urllib.parse.quote(base64.b64encode(request.public_bytes(serialization.Encoding.DER)).decode(), safe="")
    status, _, body = http(f"{base}/ocsp/{path}")
    assert status == 200
    return ocsp.load_der_ocsp_response(body).certificate_status.name


def _crl_number(base: str, name: str) -> int:
    status, _, body = http(f"{base}/crl/{name}")
    assert status == 200, name
    return x509.load_der_x509_crl(body).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _numbers(pg_url: str) -> list[tuple[str, str, str, int, str]]:
    with psycopg.connect(pg_url) as conn:
        return conn.execute("SELECT i.name, r.scope, r.kind, r.number, r.state FROM crls r JOIN issuers i "
                            "ON i.id = r.issuer_id ORDER BY r.id").fetchall()


def test_two_nodes_on_one_postgresql_registry(demo: Path, pg_url: str) -> None:
    a, b = _node_config(demo, pg_url, "a"), _node_config(demo, pg_url, "b")
    run_cli("import", "-c", str(a), str(demo.parent / "certs"), check=True)
    # the offline root's ARL, published once through one node: the other serves it from the registry
    run_cli("crl", "publish", "-c", str(a), "--issuer", "ac-racine", str(demo.parent / "ca" / "ac-racine.crl"),
            check=True)
    manifest = json.loads((demo.parent / "certs" / "manifest.json").read_text())
    good = [m for m in manifest if m["issuer"] == "ac-personnes" and m.get("status", "good") == "good"]
    with serve(a) as node_a:
        with serve(b) as node_b:
            # node a started first and builds every online issuer's CRLs; b serves the very same ones
            for name in ("ac-racine.crl", "ac-personnes.crl", "ac-personnes-delta.crl", "ac-structures.crl"):
                deadline = time.monotonic() + 10
                while _crl_number(node_b.base, name) != _crl_number(node_a.base, name):
                    assert time.monotonic() < deadline, name
                    time.sleep(0.1)

            # a revocation made through the registry by a third process: both nodes' OCSP within a second
            victim = good[0]
            assert _ocsp_status(node_a.base, demo, victim) == _ocsp_status(node_b.base, demo, victim) == "GOOD"
            started = time.monotonic()
            run_cli("revoke", "-c", str(b), "--issuer", "ac-personnes", "--serial", victim["serial_hex"],
                    "--reason", "keyCompromise", check=True)
            committed = time.monotonic()
            seen = {}
            while len(seen) < 2 and time.monotonic() - committed < 5:
                for label, node in (("a", node_a), ("b", node_b)):
                    if label not in seen and _ocsp_status(node.base, demo, victim) == "REVOKED":
                        seen[label] = time.monotonic() - committed
                time.sleep(0.02)
            assert set(seen) == {"a", "b"} and max(seen.values()) < 1.0, (seen, committed - started)

            # concurrent builders (two CLI processes and the service) never share or reuse a number
            def build() -> None:
                subprocess.run([sys.executable, "-m", "directory.cli", "crl", "build", "-c", str(b),
                                "--issuer", "ac-structures"], capture_output=True, cwd=ROOT)

            threads = [threading.Thread(target=build) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rows = _numbers(pg_url)
            for scope in {(r[0], r[1]) for r in rows}:
                numbers = [r[3] for r in rows if (r[0], r[1]) == scope]
                assert numbers == sorted(set(numbers)), (scope, numbers)  # strictly increasing, no repeat
            published = [r[3] for r in rows if r[:3] == ("ac-structures", "main", "full") and r[4] == "published"]
            assert len(published) >= 3

            # the builder dies: b takes over within the lease check and publishes the next revocation
            node_a.proc.send_signal(signal.SIGKILL)
            node_a.proc.wait()
            killed = time.monotonic()
            run_cli("revoke", "-c", str(b), "--issuer", "ac-personnes", "--serial", good[1]["serial_hex"],
                    "--reason", "superseded", check=True)
            serial = int(good[1]["serial_hex"], 16)

            def listed() -> bool:
                crl = x509.load_der_x509_crl(http(f"{node_b.base}/crl/ac-personnes-delta.crl")[2])
                return crl.get_revoked_certificate_by_serial_number(serial) is not None

            while not listed() and time.monotonic() - killed < 30:
                time.sleep(0.1)
            takeover = time.monotonic() - killed
            assert listed(), takeover
            assert takeover < LEASE_CHECK + 5 + 5, takeover  # lease check + on_revocation_delay (5 s) + build
        log_b = node_b.output
    assert re.search(r"this node now builds the CRLs of ac-personnes", log_b), log_b[-3000:]
    print(f"OCSP visibility after commit: a {seen['a']:.3f} s, b {seen['b']:.3f} s; takeover {takeover:.2f} s")
