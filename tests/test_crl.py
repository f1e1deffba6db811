"""CRLs built from the demo registry, checked with openssl and cryptography."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from asn1crypto import crl as acrl
from cryptography import x509

from tests.conftest import ROOT, run_cli


def _manifest(demo_dir: Path) -> list[dict]:
    return json.loads((demo_dir / "certs" / "manifest.json").read_text())


def _build(config: Path, *extra: str) -> list[dict]:
    result = run_cli("crl", "build", "--config", str(config), "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _openssl_verify(demo_dir: Path, cert_file: Path, *crl_files: Path, extra: tuple[str, ...] = ()) -> str:
    args = ["openssl", "verify", "-crl_check", *extra, "-CAfile", str(demo_dir / "ca" / "chain.pem")]
    for crl in crl_files:
        args += ["-CRLfile", str(crl)]
    result = subprocess.run([*args, str(cert_file)], capture_output=True, text=True)
    return result.stdout + result.stderr


def test_full_crls_verify_and_list_exactly_the_revoked(demo: Path) -> None:
    built = _build(demo)
    demo_dir = demo.parent
    crl_dir = demo_dir / "data" / "crl"
    for name in ("ac-racine", "ac-personnes", "ac-structures"):
        check = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(crl_dir / f"{name}.crl"), "-noout",
                                "-CAfile", str(demo_dir / "ca" / "chain.pem")], capture_output=True, text=True)
        assert "verify OK" in check.stdout + check.stderr, check.stderr
    manifest = _manifest(demo_dir)
    for name in ("ac-personnes", "ac-structures"):
        crl = x509.load_der_x509_crl((crl_dir / f"{name}.crl").read_bytes())
        expected = {int(m["serial_hex"], 16): m for m in manifest if m["issuer"] == name and m["status"] != "good"}
        assert {r.serial_number for r in crl} == set(expected)
        for revoked in crl:
            reason = expected[revoked.serial_number]["reason"]
            if reason == "unspecified":
                with pytest.raises(x509.ExtensionNotFound):
                    revoked.extensions.get_extension_for_class(x509.CRLReason)
            else:
                value = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
                assert value.replace("_", "").lower() == reason.lower()
        issuer_cert = x509.load_pem_x509_certificate((demo_dir / "ca" / f"{name}.pem").read_bytes())
        assert crl.issuer.public_bytes() == issuer_cert.subject.public_bytes()
        assert crl.is_signature_valid(issuer_cert.public_key())  # type: ignore[arg-type]
        assert crl.next_update_utc > crl.last_update_utc
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        assert aki == issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert {b["number"] for b in built if b["kind"] == "full"} == {1}
    # the root's CRL (ARL) is empty: no empty revokedCertificates SEQUENCE, the field is absent
    tbs = acrl.CertificateList.load((crl_dir / "ac-racine.crl").read_bytes())["tbs_cert_list"]
    raw = tbs.dump()
    next_update = tbs["next_update"].dump()
    assert raw[raw.index(next_update) + len(next_update)] == 0xA0  # extensions follow nextUpdate directly


def test_openssl_verify_crl_check_on_every_demo_certificate(demo: Path) -> None:
    _build(demo)
    demo_dir = demo.parent
    crl_dir = demo_dir / "data" / "crl"
    arl = crl_dir / "ac-racine.crl"
    for entry in _manifest(demo_dir)[:30]:
        cert_file = demo_dir / "certs" / entry["file"]
        out = _openssl_verify(demo_dir, cert_file, crl_dir / f"{entry['issuer']}.crl", arl,
                              extra=("-crl_check_all",))
        if entry["status"] == "good":
            assert f"{cert_file}: OK" in out, out
        else:
            assert "certificate revoked" in out, (entry, out)


def test_delta_crl_is_used_by_openssl(demo: Path) -> None:
    demo_dir = demo.parent
    _build(demo)  # full 1 + delta 2 for ac-personnes
    manifest = _manifest(demo_dir)
    good = next(m for m in manifest if m["issuer"] == "ac-personnes" and m["status"] == "good")
    run_cli("revoke", "--config", str(demo), "--issuer", "ac-personnes", "--serial", "0x" + good["serial_hex"],
            "--reason", "keyCompromise", check=True)
    delta = _build(demo, "--delta")
    assert delta[0]["kind"] == "delta" and delta[0]["entries"] == 1
    crl_dir = demo_dir / "data" / "crl"
    cert_file = demo_dir / "certs" / good["file"]
    full_only = _openssl_verify(demo_dir, cert_file, crl_dir / "ac-personnes.crl")
    assert f"{cert_file}: OK" in full_only  # the base does not know yet
    with_delta = _openssl_verify(demo_dir, cert_file, crl_dir / "ac-personnes.crl", crl_dir / "ac-personnes-delta.crl",
                                 extra=("-use_deltas",))
    assert "certificate revoked" in with_delta, with_delta
    parsed = x509.load_der_x509_crl((crl_dir / "ac-personnes-delta.crl").read_bytes())
    base = x509.load_der_x509_crl((crl_dir / "ac-personnes.crl").read_bytes())
    base_number = base.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert parsed.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number == base_number
    assert parsed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > base_number
    freshest = base.extensions.get_extension_for_class(x509.FreshestCRL).value
    assert freshest[0].full_name[0].value.endswith("/crl/ac-personnes-delta.crl")


def test_delta_carries_remove_from_crl_for_a_released_hold(demo: Path) -> None:
    demo_dir = demo.parent
    manifest = _manifest(demo_dir)
    good = next(m for m in manifest if m["issuer"] == "ac-personnes" and m["status"] == "good")
    base = ["--config", str(demo), "--issuer", "ac-personnes", "--serial", "0x" + good["serial_hex"]]
    run_cli("revoke", *base, "--reason", "certificateHold", check=True)
    _build(demo)  # the hold is in the base
    run_cli("release-hold", *base, check=True)
    delta = _build(demo, "--delta")
    assert delta[0]["entries"] == 1
    crl_dir = demo_dir / "data" / "crl"
    parsed = x509.load_der_x509_crl((crl_dir / "ac-personnes-delta.crl").read_bytes())
    entry = parsed.get_revoked_certificate_by_serial_number(int(good["serial_hex"], 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.remove_from_crl
    cert_file = demo_dir / "certs" / good["file"]
    assert "certificate revoked" in _openssl_verify(demo_dir, cert_file, crl_dir / "ac-personnes.crl")
    out = _openssl_verify(demo_dir, cert_file, crl_dir / "ac-personnes.crl", crl_dir / "ac-personnes-delta.crl",
                          extra=("-use_deltas",))
    assert f"{cert_file}: OK" in out, out


def test_partitioned_crls_are_accepted_for_each_partition(tmp_path: Path) -> None:
    demo_dir = tmp_path / "parts"
    run_cli("init-demo", str(demo_dir), "--certs", "40", "--crl-partitions", "3", check=True)
    config = demo_dir / "annuaire.toml"
    built = _build(config)
    assert {b["file"].rsplit("/", 1)[1] for b in built} >= {f"ac-personnes-p{i}.crl" for i in range(3)}
    crl_dir = demo_dir / "data" / "crl"
    seen = set()
    for entry in _manifest(demo_dir):
        cert_file = demo_dir / "certs" / entry["file"]
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name[0].value
        part = cdp.rsplit("/", 1)[1].removesuffix(".crl")
        seen.add(part)
        part_crl = crl_dir / f"{part}.crl"
        idp = x509.load_der_x509_crl(part_crl.read_bytes()).extensions.get_extension_for_class(
            x509.IssuingDistributionPoint).value
        assert idp.full_name[0].value == cdp
        out = _openssl_verify(demo_dir, cert_file, part_crl)
        if entry["status"] == "good":
            assert f"{cert_file}: OK" in out, out
        else:
            assert "certificate revoked" in out, out
    assert len(seen) >= 4  # several partitions of both issuing CAs were exercised


def test_numbers_only_go_up_across_restarts_and_concurrent_builders(demo: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-m", "directory.cli", "crl", "build", "--config", str(demo),
                               "--issuer", "ac-personnes"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(4)]
    for p in procs:
        p.wait(timeout=120)
    _build(demo, "--issuer", "ac-personnes")  # one more, after every process is gone (a "restart")
    db = sqlite3.connect(demo.parent / "data" / "registry.sqlite3")
    rows = db.execute("SELECT r.number, r.state, r.kind FROM crls r JOIN issuers i ON i.id = r.issuer_id "
                      "WHERE i.name = 'ac-personnes' AND r.scope = 'main' ORDER BY r.id").fetchall()
    numbers = [r[0] for r in rows]
    assert len(numbers) == len(set(numbers)), "a number named two CRLs"
    published = [r[0] for r in rows if r[1] == "published"]
    assert published == sorted(published) and len(published) >= 2
    final = x509.load_der_x509_crl((demo.parent / "data" / "crl" / "ac-personnes.crl").read_bytes())
    final_number = final.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert final_number == max(n for n, state, kind in rows if state == "published" and kind == "full")
    assert db.execute("SELECT last_number FROM crl_scopes s JOIN issuers i ON i.id = s.issuer_id "
                      "WHERE i.name = 'ac-personnes' AND s.scope = 'main'").fetchone()[0] == max(numbers)


def _bulk_revoked(db_path: Path, issuer: str, count: int) -> None:
    """Many revoked rows straight into the registry (to make a build take a noticeable time)."""
    from directory import der

    db = sqlite3.connect(db_path)
    issuer_id = db.execute("SELECT id FROM issuers WHERE name = ?", (issuer,)).fetchone()[0]
    now = int(time.time())
    first = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM certificates").fetchone()[0]
    serials = [(first + n, 10**12 + n) for n in range(count)]
    db.executemany("INSERT INTO certificates (id, issuer_id, serial_hex, status, revocation_time, reason, serial_low, "
                   "imported_at, updated_at, not_after) VALUES (?,?,?,?,?,?,?,?,?,?)",
                   [(cid, issuer_id, format(s, "x"), "revoked", now - 60, "superseded", s & 0xFFFFFFFF, now, now,
                     now + 10**7) for cid, s in serials])
    db.executemany("INSERT INTO crl_entries (issuer_id, certificate_id, not_after, serial_low, entry_der) "
                   "VALUES (?,?,?,?,?)", [(issuer_id, cid, now + 10**7, s & 0xFFFFFFFF,
                                          der.revoked_entry(s, now - 60, 4)) for cid, s in serials])
    db.commit()


def test_killed_mid_build_leaves_the_previous_crl_served_intact(demo: Path) -> None:
    _build(demo, "--issuer", "ac-structures")
    crl_path = demo.parent / "data" / "crl" / "ac-structures.crl"
    before = crl_path.read_bytes()
    _bulk_revoked(demo.parent / "data" / "registry.sqlite3", "ac-structures", 300_000)
    for delay in (0.3, 0.6, 0.9, 1.2):
        proc = subprocess.Popen([sys.executable, "-m", "directory.cli", "crl", "build", "--config", str(demo),
                                 "--issuer", "ac-structures"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        current = crl_path.read_bytes()
        crl = x509.load_der_x509_crl(current)  # whatever happened, the served file is a whole, valid CRL
        issuer = x509.load_pem_x509_certificate((demo.parent / "ca" / "ac-structures.pem").read_bytes())
        assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        assert current == before or len(crl) >= 300_000
    built = _build(demo, "--issuer", "ac-structures")  # the next build works and goes on numbering
    assert built[0]["entries"] >= 300_000
    numbers = [r[0] for r in sqlite3.connect(demo.parent / "data" / "registry.sqlite3").execute(
        "SELECT number FROM crls r JOIN issuers i ON i.id = r.issuer_id WHERE i.name = 'ac-structures' "
        "AND scope = 'main'")]
    assert len(numbers) == len(set(numbers))


def test_a_crl_failing_its_self_check_is_never_published(demo: Path) -> None:
    _build(demo, "--issuer", "ac-structures")
    crl_path = demo.parent / "data" / "crl" / "ac-structures.crl"
    before = crl_path.read_bytes()
    text = demo.read_text()
    demo.write_text(text.replace('key_label = "ac-structures"', 'key_label = "ac-personnes"'))  # wrong key
    result = run_cli("crl", "build", "--config", str(demo), "--issuer", "ac-structures")
    assert result.returncode == 1
    assert "not published" in result.stderr and "does not verify" in result.stderr
    assert crl_path.read_bytes() == before
    states = [r[0] for r in sqlite3.connect(demo.parent / "data" / "registry.sqlite3").execute(
        "SELECT state FROM crls r JOIN issuers i ON i.id = r.issuer_id WHERE i.name = 'ac-structures' "
        "ORDER BY r.id")]
    assert states[-1] == "failed"


def test_crl_show(demo: Path) -> None:
    _build(demo, "--issuer", "ac-personnes")
    out = run_cli("crl", "show", "--config", str(demo), "--json",
                  str(demo.parent / "data" / "crl" / "ac-personnes.crl"), check=True)
    info = json.loads(out.stdout)
    assert info["crl_number"] == 1 and info["signature"] == "valid" and info["configured_issuer"] == "ac-personnes"
    bad = run_cli("crl", "show", str(demo))
    assert bad.returncode == 1 and "not an X.509 CRL" in bad.stderr


def test_a_registry_restored_from_an_old_backup_never_reuses_a_published_number(demo: Path, tmp_path: Path) -> None:
    """Backup taken, CRLs published after it, backup restored: the next CRL continues after the highest
    number already published (found in the archive), it does not hand out those numbers again."""
    registry_file = demo.parent / "data" / "registry.sqlite3"
    _build(demo, "--issuer", "ac-personnes")
    backup = tmp_path / "backup.sqlite3"
    with sqlite3.connect(registry_file) as source, sqlite3.connect(backup) as target:
        source.backup(target)
    for _ in range(2):
        _build(demo, "--issuer", "ac-personnes")
    served = x509.load_der_x509_crl((demo.parent / "data" / "crl" / "ac-personnes.crl").read_bytes())
    seen = served.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    for suffix in ("-wal", "-shm"):
        (registry_file.parent / (registry_file.name + suffix)).unlink(missing_ok=True)
    shutil.copy(backup, registry_file)  # the restore
    result = run_cli("crl", "build", "--config", str(demo), "--issuer", "ac-personnes", "--json", check=True)
    numbers = [c["number"] for c in json.loads(result.stdout)]
    assert min(numbers) > seen, (numbers, seen)
    assert "registry was behind it" in result.stderr


def test_a_build_reads_while_the_hsm_opens_and_fails_cleanly_when_it_cannot(demo: Path) -> None:
    """`crl build` opens the HSM on a thread while the first build reads its entries: the key is waited for
    once they are read (same CRL, verified), and an HSM that could not be opened fails the build like a
    signing failure (nothing published, the number recorded 'failed'), its error named."""
    import threading
    from concurrent.futures import Future

    from directory.config.load import load_config
    from directory.crl.builder import CrlBuildError, publishers_for
    from directory.hsm.errors import HsmUnavailable
    from directory.runtime import open_config_registry, open_hsm

    config = load_config(demo)
    registry = open_config_registry(config)
    crl_file = config.data_dir / "crl" / "ac-personnes.crl"
    try:
        opening: Future = Future()
        publisher = publishers_for(config, opening, registry)["ac-personnes"]
        threading.Timer(0.3, lambda: opening.set_result(open_hsm(config))).start()  # opened late
        crl = publisher.publish(publisher.full_targets()[0])
        assert crl.entries == len(x509.load_der_x509_crl(crl.path.read_bytes()))
        opening.result().close()
        before = crl_file.read_bytes()
        failing: Future = Future()
        failing.set_exception(HsmUnavailable("token 'demo' not found"))
        publisher = publishers_for(config, failing, registry)["ac-personnes"]
        with pytest.raises(CrlBuildError, match="token 'demo' not found"):
            publisher.publish(publisher.full_targets()[0])
        assert crl_file.read_bytes() == before
        assert registry.crl_latest("ac-personnes", "main", "full").number == crl.record.number
    finally:
        registry.close()


def test_crl_build_with_a_module_that_is_not_pkcs11_publishes_nothing(demo: Path) -> None:
    """The module is loaded on the opening thread while the build reads: its failure fails the build (the
    number burnt, as when signing fails) and the command; the CRL served stays."""
    _build(demo, "--issuer", "ac-personnes")
    crl_file = demo.parent / "data" / "crl" / "ac-personnes.crl"
    before = crl_file.read_bytes()
    text = demo.read_text()
    module = next(line for line in text.splitlines() if line.startswith("module = "))
    demo.write_text(text.replace(module, 'module = "/usr/lib/x86_64-linux-gnu/libz.so.1"'))
    result = run_cli("crl", "build", "--config", str(demo), "--issuer", "ac-personnes")
    assert result.returncode == 1
    assert "not published" in result.stderr and "C_GetFunctionList" in result.stderr, result.stderr
    assert crl_file.read_bytes() == before
