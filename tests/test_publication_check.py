"""The publication checker against a served demo (real slapd, SoftHSM, HTTP): each channel broken by hand is
reported with the serial (metric, /readyz, the page's health, a log line, `annuaire check publication`), a
clean run right after a revocation reports nothing, and a repair clears the report."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import ldap3
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from directory.check.ldap_probe import exact_assertion
from tests.conftest import ROOT, run_cli
from tests.served import Served, http, serve

CHECK = """
[check]
interval = 1
full_cycle = 3
ocsp_grace = 5
crl_margin = 5
ldap_grace = 5
"""


def _wait(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _metric(served: Served, series: str) -> float:
    body = http(served.base + "/metrics")[2].decode()
    match = re.search(rf"^{re.escape(series)} (\S+)$", body, re.M)
    assert match, f"no {series} series"
    return float(match.group(1))


def _mismatch(served: Served, channel: str) -> float:
    return _metric(served, f'annuaire_publication_mismatch{{channel="{channel}"}}')


def _log(served: Served) -> str:
    return b"".join(served._chunks).decode(errors="replace")


def _check(config: Path, *args: str) -> tuple[int, dict]:
    result = run_cli("check", "publication", "-c", str(config), "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def _listed(report: dict, channel: str, serial: str) -> list[dict]:
    return [m for m in report["mismatches"] if m["channel"] == channel and m["serial"] == f"0x{serial}"]


def _certificate(demo: Path, entry: dict) -> x509.Certificate:
    return x509.load_pem_x509_certificate((demo.parent / "certs" / entry["file"]).read_bytes())


def _pick(demo: Path) -> tuple[dict, dict]:
    manifest = json.loads((demo.parent / "certs" / "manifest.json").read_text())
    structures = next(m for m in manifest if m["issuer"] == "ac-structures" and m["status"] == "good")
    person = next(m for m in manifest if m["issuer"] == "ac-personnes" and m["status"] == "good")
    return structures, person


def _replace(source: Path, target: Path) -> None:
    """Put a copy of ``source`` in place of ``target`` (a new inode: the archive's hard link is untouched)."""
    tmp = target.with_name(f".{target.name}.test")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def test_each_broken_channel_is_reported_with_the_serial(demo: Path) -> None:
    demo.write_text(demo.read_text() + CHECK)
    revoked, good = _pick(demo)
    crl_dir = demo.parent / "data" / "crl"
    with serve(demo) as served:
        _wait(lambda: _metric(served, "annuaire_publication_check_cycles_total") >= 3, 30, "three checker cycles")
        assert all(_mismatch(served, c) == 0 for c in ("ocsp", "crl", "ldap")), _log(served)[-3000:]
        assert _check(demo, "--all")[0] == 0
        # the bench script at its tiny size: the checker's own cycles, its CPU measured, nothing found
        bench = subprocess.run([sys.executable, "-m", "bench.check", "--config", str(demo), "--base", served.base,
                                "--pid", str(served.proc.pid), "--duration", "2", "--interval", "1",
                                "--crl-entries", "0", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert bench.returncode == 0, bench.stderr[-2000:]
        figures = json.loads(bench.stdout)
        assert figures["findings"] == 0 and figures["cycles"] >= 1 and figures["checker_cpu_s"] > 0, figures

        # a revocation: no report while each channel is within its allowance, then every channel agrees
        run_cli("revoke", "-c", str(demo), "--issuer", "ac-structures", "--serial", f"0x{revoked['serial_hex']}",
                "--reason", "keyCompromise", check=True)
        revoked_at = time.monotonic()
        while time.monotonic() - revoked_at < 12:  # CRL allowance: on_revocation_delay 5 s + crl_margin 5 s
            code, report = _check(demo)
            assert code == 0, report
        assert "publication mismatch" not in _log(served)
        assert _check(demo, "--all")[0] == 0

        # the directory edited by hand: the revoked certificate's value put back, a good one's removed
        bind = (_config_value(demo, "bind_dn"), (demo.parent / "secrets" / "ldap-password").read_text().strip())
        person = _certificate(demo, good)
        with ldap3.Connection(ldap3.Server(served.ldap_url), *bind, auto_bind=True) as conn:
            conn.search("o=sante,c=fr", exact_assertion(person.issuer, person.serial_number), attributes=[])
            holder = conn.entries[0].entry_dn
            assert conn.modify(holder, {"userCertificate;binary": [
                (ldap3.MODIFY_ADD, [_certificate(demo, revoked).public_bytes(Encoding.DER)])]})
            assert conn.modify(holder, {"userCertificate;binary": [
                (ldap3.MODIFY_DELETE, [person.public_bytes(Encoding.DER)])]})
        _wait(lambda: _mismatch(served, "ldap") == 2, 20, "both directory edits reported")
        log = _log(served)
        assert f"publication mismatch: ldap ac-structures 0x{revoked['serial_hex']}: expected not found" in log
        assert f"publication mismatch: ldap ac-personnes 0x{good['serial_hex']}: expected found" in log
        status, _, body = http(served.base + "/readyz")
        ready = json.loads(body)
        assert status == 200 and revoked["serial_hex"] in ready["warnings"]["publication"], ready  # not failing it
        token = (demo.parent / "secrets" / "admin-token").read_text().strip()
        operations = json.loads(http(served.admin + "/api/v1/operations",
                                     headers={"Authorization": f"Bearer {token}"})[2])
        health = operations["health"]  # the operator view names the serials; the public page does not
        assert not health["ok"] and any(p["part"] == "publication" and good["serial_hex"] in p["text"]
                                        for p in health["problems"]), health
        public = json.loads(http(served.base + "/status.json")[2])["health"]
        assert not public["ok"] and any(p["code"] == "publication" for p in public["problems"]), public
        assert good["serial_hex"] not in json.dumps(public)
        code, report = _check(demo, "--all")
        assert code == 1 and _listed(report, "ldap", revoked["serial_hex"]) and _listed(report, "ldap",
                                                                                       good["serial_hex"])
        assert {m["channel"] for m in report["mismatches"]} == {"ldap"}, report
        run_cli("ldap", "sync", "--full", "-c", str(demo), check=True)
        _wait(lambda: _mismatch(served, "ldap") == 0, 20, "the repaired directory cleared")
        assert f"publication agrees again: ldap ac-personnes 0x{good['serial_hex']}" in _log(served)

        # an older CRL file served: the one from before the revocation copied over the current one
        archived = sorted((crl_dir / "archive").glob("ac-structures-*.crl"), key=lambda p: int(p.stem.split("-")[-1]))
        assert len(archived) >= 2
        _replace(archived[0], crl_dir / "ac-structures.crl")
        _wait(lambda: _mismatch(served, "crl") >= 2, 20, "the older CRL reported")
        log = _log(served)
        assert f"publication mismatch: crl ac-structures 0x{revoked['serial_hex']}: expected listed revoked" in log
        assert "publication mismatch: crl ac-structures (whole channel): expected number" in log
        code, report = _check(demo)
        assert code == 1 and _listed(report, "crl", revoked["serial_hex"])
        assert any(m["serial"] is None and m["where"] == "ac-structures.crl" for m in report["mismatches"])
        _replace(archived[-1], crl_dir / "ac-structures.crl")
        _wait(lambda: _mismatch(served, "crl") == 0, 20, "the current CRL back")
        assert _check(demo, "--all")[0] == 0


def test_a_stale_ocsp_answer_is_reported_and_can_fail_readiness(demo: Path) -> None:
    demo.write_text(demo.read_text() + CHECK + "fail_readiness = true\n")
    target, _ = _pick(demo)
    serial = target["serial_hex"]
    registry = demo.parent / "data" / "registry.sqlite3"

    def persisted() -> bytes | None:
        with sqlite3.connect(registry) as db:
            row = db.execute("SELECT body FROM ocsp_responses WHERE serial_hex = ? AND hash_name = 'sha1'",
                             (serial,)).fetchone()
        return bytes(row[0]) if row else None

    with serve(demo) as served:
        good_answer = _wait(persisted, 20, "the pre-signed answer persisted")
        run_cli("revoke", "-c", str(demo), "--issuer", "ac-structures", "--serial", f"0x{serial}", "--reason",
                "keyCompromise", check=True)
        _wait(lambda: persisted() not in (None, good_answer), 20, "the revoked answer persisted")
        assert http(served.base + "/readyz")[0] == 200
    # the service stopped: its persisted answer is put back to the "good" one signed before the revocation
    with sqlite3.connect(registry) as db:
        db.execute("UPDATE ocsp_responses SET body = ?, this_update = ? WHERE serial_hex = ? AND hash_name = 'sha1'",
                   (good_answer, int(time.time()), serial))
    with serve(demo, ready=False) as served:
        def unready() -> dict | None:
            status, _, body = http(served.base + "/readyz")
            answer = json.loads(body)
            return answer if status == 503 and serial in answer.get("problems", {}).get("publication", "") else None

        answer = _wait(unready, 20, "/readyz failing on the OCSP mismatch")
        assert "seen good" in answer["problems"]["publication"], answer
        assert _mismatch(served, "ocsp") == 1 and _mismatch(served, "crl") == 0 and _mismatch(served, "ldap") == 0
        assert f"publication mismatch: ocsp ac-structures 0x{serial}: expected revoked (keyCompromise)" in _log(served)
        # an independent client sees the same lie: openssl with a SHA-1 CertID and no nonce, as RFC 5019 clients ask
        ca = demo.parent / "ca"
        seen = subprocess.run(["openssl", "ocsp", "-issuer", str(ca / "ac-structures.pem"), "-serial", f"0x{serial}",
                               "-url", served.base + "/ocsp", "-CAfile", str(ca / "chain.pem"), "-no_nonce"],
                              capture_output=True, text=True, timeout=30)
        assert f"0x{serial}: good" in seen.stdout.lower(), seen
        code, report = _check(demo)
        found = _listed(report, "ocsp", serial)
        assert code == 1 and found and {m["seen"] for m in found} == {"good"}, report
        assert found[0]["expected"].startswith("revoked (keyCompromise)")
        assert not [m for m in report["mismatches"] if m["channel"] != "ocsp"], report


def _config_value(config: Path, key: str) -> str:
    match = re.search(rf'^{key} = "([^"]+)"', config.read_text(), re.M)
    assert match
    return match.group(1)
