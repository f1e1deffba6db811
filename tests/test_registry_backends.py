"""The registry's SQL on both backends: CRL snapshots, upserts, the outbox, concurrent writers keeping one
audit chain; and the command line on a PostgreSQL registry, checked with openssl."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from directory import der
from directory.certinfo import CertificateInfo
from directory.registry import Registry
from directory.registry.audit import verify_chain
from directory.revocation import REASON_CODES
from tests.conftest import run_cli

NOW = 1_900_000_000


def _info(serial: int) -> CertificateInfo:
    return CertificateInfo(serial, format(serial, "x"), f"CN=user {serial}", (f"u{serial}@x.fr",), (), None,
                           NOW - 86400, NOW + 86400 * 365, b"\x30\x03\x02\x01" + bytes([serial % 256]),
                           f"{serial:064x}", "authentication")


@pytest.fixture()
def registry(registry_location: str):  # type: ignore[no-untyped-def]
    reg = Registry(registry_location, clock=lambda: float(NOW))
    reg.ensure_issuer("ca", b"subject", b"cert")
    reg.import_certificates("ca", [_info(n) for n in range(1, 201)])
    yield reg
    reg.close()


def test_crl_snapshot_entries_partitions_and_delta(registry: Registry) -> None:
    revoked = {n: "keyCompromise" if n % 2 else "superseded" for n in range(3, 200, 7)}
    for n, reason in revoked.items():
        registry.revoke("ca", format(n, "x"), reason, at=NOW - 10)
    registry.revoke("ca", format(5, "x"), "certificateHold", at=NOW - 10)
    expected = {format(n, "x"): der.revoked_entry(n, NOW - 10, REASON_CODES[r]) for n, r in revoked.items()}
    expected["5"] = der.revoked_entry(5, NOW - 10, REASON_CODES["certificateHold"])
    with registry.crl_snapshot("ca") as snap:
        count, chunks = snap.full_entries(None, chunks=3)
        seq = snap.change_seq
    blob = b"".join(chunks)
    assert count == len(expected) and len(blob) == sum(map(len, expected.values()))
    assert all(entry in blob for entry in expected.values())
    with registry.crl_snapshot("ca") as snap:
        parts = [snap.full_entries(None, (4, i))[0] for i in range(4)]
    assert sum(parts) == count and all(parts)
    # a released hold: the delta carries removeFromCRL for it, and nothing else changed
    registry.release_hold("ca", "5")
    with registry.crl_snapshot("ca") as snap:
        delta = snap.delta_entries(seq, NOW)
    assert delta == [der.revoked_entry(5, NOW, der.REMOVE_FROM_CRL)]
    assert [c[2] for c in registry.changes_after(seq)] == ["5"]


def test_published_crls_and_file_states_on_both_backends(registry: Registry) -> None:
    """A CRL signed elsewhere recorded under its own number (never below the sequence, in one transaction),
    and an index line's state applied only where it is the newer."""
    from directory.registry.crls import CrlNumberRefused
    from directory.revocation import RevocationState

    record = registry.crl_record_published("ca", "main", "full", 4711, NOW - 60, NOW + 86400, 0, 100, "ab" * 32,
                                           "test", b"\x30\x00")
    assert registry.crl_latest("ca") == record and registry.crl_last_number("ca") == 4711
    with pytest.raises(CrlNumberRefused):
        registry.crl_record_published("ca", "main", "full", 4711, NOW, NOW + 86400, 0, 100, "cd" * 32, "test")
    assert registry.crl_allocate("ca", "main", "full", NOW, NOW + 86400).number == 4712
    held = RevocationState("on-hold", "certificateHold", NOW - 100)
    assert registry.apply_file_state("ca", "7", held).applied  # never changed here: the file's is newer
    registry.clock = lambda: float(NOW + 10)
    registry.release_hold("ca", "7")
    kept = registry.apply_file_state("ca", "7", held)
    assert (kept.order, kept.applied, kept.before.status) == ("registry-newer", False, "good")
    assert registry.apply_file_state("ca", "7", held, apply_older=True).applied
    assert registry.get("ca", "7").status == "on-hold"  # type: ignore[union-attr]


def test_upserts_replace_and_the_outbox_drains(registry: Registry) -> None:
    registry.ocsp_store([("ca", "1", "sha1", NOW, NOW + 10, b"old")])
    registry.ocsp_store([("ca", "1", "sha1", NOW + 1, NOW + 20, b"new")])
    assert [r[5] for r in registry.ocsp_load(NOW) if r[1] == "1"] == [b"new"]
    registry.state_set({"a": "1"})
    registry.state_set({"a": "2", "b": "3"})
    assert (registry.state_get("a"), registry.state_get("b")) == ("2", "3")
    registry.ldap_project_serials("L", "ca", [("1", "k1", "cn=one", "{}")])
    registry.ldap_project_serials("L", "ca", [("1", "k2", "cn=two", "{}")])
    assert registry.publication_facts("ca", "1")["ldap_dn"] == "cn=two"  # type: ignore[index]
    depth, top, _ = registry.ldap_outbox_stats()
    assert depth == 201 and top > 0  # the issuer and its 200 certificates
    registry.revoke("ca", "2", "keyCompromise")
    assert len(registry.ldap_outbox_times(up_to=top + 10)) == 1  # only status changes carry a time
    registry.ldap_outbox_done(up_to=top)
    assert registry.ldap_outbox_stats()[0] == 1
    assert registry.counts() == {"ca": {"good": 199, "revoked": 1, "on-hold": 0}}


def test_refused_entries_keep_their_outbox_rows_as_dead_letters(registry: Registry) -> None:
    from directory.registry.dead_letters import RETRY_FIRST, LdapRefusal

    registry.ldap_outbox_settle("L", NOW, up_to=registry.ldap_outbox_stats()[1])  # the import's rows: written
    registry.ldap_project_serials("L", "ca", [("1", "k1", "cn=one", "{}"), ("2", "k1", "cn=one", "{}"),
                                              ("3", "k3", "cn=three", "{}")])
    for serial in ("1", "3", "4"):
        registry.revoke("ca", serial, "keyCompromise")
    rows = registry.ldap_outbox(100, now=NOW)
    assert len(rows) == 3 and registry.ldap_outbox_due(NOW)
    # the entry k1 refused: serial 1's row stays (marked), the others go; an issuer entry refused with no
    # row of its own gets one
    times = registry.ldap_outbox_settle("L", NOW, ids=[r[0] for r in rows], refusals=[
        LdapRefusal("modify cn=one: 21 invalid", dn_key="k1"), LdapRefusal("modify cn=ca: 50 denied", issuer="ca")])
    assert len(times) == 2  # the status changes of serials 3 and 4 reached the directory
    count, first = registry.ldap_refused()
    assert count == 2 and {r["reason"] for r in first} == {"modify cn=one: 21 invalid", "modify cn=ca: 50 denied"}
    one = registry.publication_facts("ca", "1")
    assert one["ldap_refused"] == {"reason": "modify cn=one: 21 invalid", "attempts": 1,  # type: ignore[index]
                                   "next_attempt_at": NOW + RETRY_FIRST}
    assert registry.publication_facts("ca", "3")["ldap_refused"] is None  # type: ignore[index]
    # a dead letter waits for its time; refused again, it backs off further; written, it goes
    assert not registry.ldap_outbox_due(NOW) and registry.ldap_outbox(100, now=NOW) == []
    later = NOW + RETRY_FIRST
    due = registry.ldap_outbox(100, now=later)
    assert len(due) == 2
    registry.ldap_outbox_settle("L", later, ids=[r[0] for r in due],
                                refusals=[LdapRefusal("modify cn=one: 21 invalid", dn_key="k1")])
    again = registry.publication_facts("ca", "1")["ldap_refused"]  # type: ignore[index]
    assert again["attempts"] == 2 and again["next_attempt_at"] == later + 2 * RETRY_FIRST
    assert registry.ldap_refused()[0] == 1
    registry.ldap_outbox_settle("L", later + 100, up_to=registry.ldap_outbox_stats()[1])  # a full pass wrote it
    assert registry.ldap_refused()[0] == 0 and registry.ldap_outbox_stats()[0] == 0
    # a full pass's refusal of an entry with no pending row: one is added, on its newest certificate
    registry.ldap_outbox_settle("L", NOW, up_to=0, refusals=[LdapRefusal("add cn=three: 65", dn_key="k3")])
    assert registry.publication_facts("ca", "3")["ldap_refused"]["attempts"] == 1  # type: ignore[index]
    registry.ldap_outbox_settle("L", NOW, up_to=registry.ldap_outbox_stats()[1],
                                refusals=[LdapRefusal("add cn=x: 65", dn_key="unknown")])
    assert registry.ldap_outbox_stats()[0] == 0  # an entry the registry does not know: nothing to keep


def test_concurrent_writers_keep_one_audit_chain(registry_location: str, registry: Registry) -> None:
    """Four threads with connections of their own, revoking at once: writes are serialised, the chain
    and the status change sequence stay linear."""
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        reg = Registry(registry_location, clock=lambda: float(NOW))
        try:
            for n in range(offset, 200, 4):
                reg.revoke("ca", format(n + 1, "x"), "superseded")
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            reg.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report = verify_chain(registry.iter_audit(batch=37))
    assert report.ok and report.records == 1 + 200 + 200
    seqs = [c[0] for c in registry.changes_after(0)]
    assert len(seqs) == 200 and seqs == sorted(seqs)
    assert registry.counts()["ca"]["revoked"] == 200


def test_command_line_on_a_postgresql_registry(private_config: Path, pg_url: str, demo_token: Path,
                                               tmp_path: Path) -> None:
    text = private_config.read_text().replace("[http]", f'[registry]\nurl = "{pg_url}"\n\n[http]', 1)
    private_config.write_text(text)
    manifest = json.loads((demo_token / "certs" / "manifest.json").read_text())
    imported = json.loads(run_cli("import", "-c", str(private_config), "--json", str(demo_token / "certs"),
                                  check=True).stdout)
    assert imported["imported"] == len(manifest) and not imported["refused"]
    victim = next(m for m in manifest if m["issuer"] == "ac-personnes" and m.get("status", "good") == "good")
    run_cli("revoke", "-c", str(private_config), "--issuer", "ac-personnes", "--serial", victim["serial_hex"],
            "--reason", "keyCompromise", check=True)
    built = json.loads(run_cli("crl", "build", "-c", str(private_config), "--issuer", "ac-personnes", "--json",
                               check=True).stdout)
    full = next(b for b in built if b["kind"] == "full")
    assert full["entries"] == 1 and full["number"] == 1
    text = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", full["file"], "-noout", "-text",
                           "-CAfile", str(demo_token / "ca" / "ac-personnes.pem")],
                          capture_output=True, text=True)
    assert "verify OK" in text.stderr + text.stdout
    assert f"SERIAL NUMBER: {victim['serial_hex'].upper()}" in text.stdout.upper()
    counts = json.loads(run_cli("status", "-c", str(private_config), "--json", check=True).stdout)
    assert counts["ac-personnes"]["revoked"] == 1
    assert run_cli("audit", "verify", "-c", str(private_config)).returncode == 0
    # no password inline in the URL: the configuration says where it belongs
    private_config.write_text(private_config.read_text().replace("postgresql://postgres@",
                                                                 "postgresql://postgres:secret@"))
    refused = run_cli("check-config", "-c", str(private_config))
    assert refused.returncode == 2 and "password_file" in refused.stderr and "secret" not in refused.stderr


def test_a_lost_postgresql_connection_is_an_error_then_replaced(pg_url: str) -> None:
    """The server drops our session (restart, failover): the call in flight fails as a RegistryError (no
    driver exception leaks), a write in flight is rolled back, the next call reconnects."""
    import psycopg

    from directory.registry import RegistryError
    from tests.pg import ADMIN_URL

    reg = Registry(pg_url, clock=lambda: float(NOW))
    reg.ensure_issuer("ca", b"subject", b"cert")
    reg.import_certificates("ca", [_info(1)])
    pid = reg._conn().raw.info.backend_pid
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(RegistryError):
        reg.revoke("ca", "1", "keyCompromise")
    assert reg.get("ca", "1").status == "good"  # type: ignore[union-attr]
    assert reg.revoke("ca", "1", "keyCompromise").changed
    reg.ping()
    reg.close()
