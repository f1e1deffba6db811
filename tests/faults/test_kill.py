"""SIGKILL at the worst moments: in the middle of an import of 10,000 certificates, and during a burst of
revocations through the admin API. After a restart the registry is consistent, every acknowledged
revocation is there and is what OCSP and the CRL say, no CRL number is reused, and re-running the import
completes it. (SIGKILL during a CRL build: tests/test_crl.py::test_killed_mid_build_...)"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from directory.config import load_config
from directory.demo import issuance
from directory.runtime import open_hsm
from tests.admin_client import call
from tests.conftest import ANNUAIRE, ROOT, run_cli
from tests.served import http, serve

COUNT = 10_000


@pytest.fixture(scope="session")
def ten_thousand(demo_pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10,000 certificates of ac-personnes in 20 PEM bundles (one key for all: only the import matters)."""
    target = tmp_path_factory.mktemp("ten-thousand")
    config = load_config(demo_pristine / "annuaire.toml")
    hsm = open_hsm(config)
    try:
        ca_cert = config.issuer("ac-personnes").certificate
        spki = ca_cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        ca = issuance.CertificateAuthority("ac-personnes", ca_cert.subject, hsm.key("ac-personnes", ca_cert), spki,
                                           ca_cert)
        with hsm.admin_session() as session:
            key = issuance.generate_key(session, "ec", None, store=False)
        now = issuance.utcnow()
        for bundle in range(COUNT // 500):
            pems = []
            for n in range(bundle * 500, (bundle + 1) * 500):
                subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Titulaire {n}"),
                                     x509.NameAttribute(NameOID.SERIAL_NUMBER, f"8109{n:08d}")])
                exts = issuance.end_entity_extensions(ca, key, "authentication", [f"t{n}@sante.example"], [], [],
                                                      None, None)
                pems.append(issuance.pem(issuance.issue(ca, subject, key, now - issuance.days(1),
                                                        now + issuance.days(30), exts)))
            (target / f"bundle-{bundle:02d}.pem").write_bytes(b"".join(pems))
    finally:
        hsm.close()
    return target


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM certificates").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_sigkill_during_an_import_of_ten_thousand(private_config: Path, ten_thousand: Path) -> None:
    db = load_config(private_config).data_dir / "registry.sqlite3"
    proc = subprocess.Popen([*ANNUAIRE, "import", "-c", str(private_config), str(ten_thousand)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _count(db) < 2000:
        assert proc.poll() is None and time.monotonic() < deadline, "the import ended before the kill"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _count(db)
    assert 2000 <= done < COUNT, done
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # whole batches only: every committed certificate has its audit record and its directory row
        audited = conn.execute("SELECT COUNT(*) FROM audit WHERE action = 'import'").fetchone()[0]
        projected = conn.execute("SELECT COUNT(*) FROM ldap_projection").fetchone()[0]
    assert audited == done and projected <= done
    assert run_cli("audit", "verify", "-c", str(private_config)).returncode == 0
    # running the same import again completes it
    again = json.loads(run_cli("import", "-c", str(private_config), "--json", str(ten_thousand), check=True).stdout)
    assert again["already_present"] == done and again["imported"] == COUNT - done and not again["refused"]
    assert _count(db) == COUNT
    # the directory placement of the batch in flight may be missing (it is written after the batch's own
    # transaction): the sync computes exactly those, and nothing is missing once it did
    from directory.ldap.projection import Layout
    from directory.ldap.sync import DirectorySync
    from directory.runtime import open_config_registry

    config = load_config(private_config)
    assert config.ldap is not None
    registry = open_config_registry(config)
    layout = Layout.from_config(config.ldap).digest
    with sqlite3.connect(db) as conn:
        projected = conn.execute("SELECT COUNT(*) FROM ldap_projection").fetchone()[0]
    unprojected = registry.ldap_unprojected(layout)
    assert len(unprojected) == COUNT - projected
    DirectorySync(config, registry).desired.project_some(unprojected)
    assert registry.ldap_unprojected(layout) == []
    registry.close()
    assert run_cli("audit", "verify", "-c", str(private_config)).returncode == 0


def test_sigkill_during_a_revocation_burst(demo: Path) -> None:
    token = (demo.parent / "secrets" / "admin-token").read_text().strip()
    manifest = json.loads((demo.parent / "certs" / "manifest.json").read_text())
    good = [m for m in manifest if m.get("status", "good") == "good" and m["issuer"] != "ac-racine"]
    acknowledged: list[dict] = []
    lock = threading.Lock()
    with serve(demo) as served:
        queue = list(good)

        def worker() -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    entry = queue.pop()
                try:
                    status, _, _ = call(served.admin, "POST", "/api/v1/revocations", token=token,
                                        body={"issuer": entry["issuer"], "serial": entry["serial_hex"],
                                              "reason": "keyCompromise"})
                except OSError:
                    return  # the service is gone
                if status == 201:
                    with lock:
                        acknowledged.append(entry)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        while len(acknowledged) < 15:
            time.sleep(0.01)
        served.proc.send_signal(signal.SIGKILL)
        for t in threads:
            t.join()
        served.proc.wait()
    assert 15 <= len(acknowledged) < len(good)

    with serve(demo) as served:
        for entry in acknowledged:  # every acknowledged revocation survived, in the registry and in OCSP
            status, _, answer = call(served.admin, "GET", f"/api/v1/certificates/{entry['issuer']}/"
                                                          f"{entry['serial_hex']}", token=token)
            assert status == 200 and answer["status"] == "revoked", entry
        deadline = time.monotonic() + 30
        while True:  # and in the CRLs, rebuilt by the restarted service
            listed = set()
            for issuer, name in (("ac-personnes", "ac-personnes.crl"), ("ac-personnes", "ac-personnes-delta.crl"),
                                 ("ac-structures", "ac-structures.crl")):
                crl = x509.load_der_x509_crl(http(f"{served.base}/crl/{name}")[2])
                listed |= {(issuer, format(r.serial_number, "x")) for r in crl}
            missing = [e for e in acknowledged if (e["issuer"], e["serial_hex"]) not in listed]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not missing, missing
        with sqlite3.connect(demo.parent / "data" / "registry.sqlite3") as conn:
            rows = conn.execute("SELECT issuer_id, scope, number FROM crls ORDER BY id").fetchall()
        for key in {(r[0], r[1]) for r in rows}:
            numbers = [r[2] for r in rows if (r[0], r[1]) == key]
            assert numbers == sorted(set(numbers)), numbers
    assert run_cli("audit", "verify", "-c", str(demo)).returncode == 0
