"""Directory sync against a real slapd (the provider configuration), checked with ldapsearch and openssl."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from directory.ldap import dn
from directory.ldap.client import LdapError, LdapUnavailable
from directory.ldap.sync import DirectorySync
from directory.registry import Registry
from tests.conftest import run_cli
from tests.ldap_env import SUFFIX, LdapEnv, issue, ldap_tool, search
from tests.served import serve

PERSONNES = f"ou=Personnes,{SUFFIX}"
STRUCTURES = f"ou=Structures,{SUFFIX}"


def _published(env: LdapEnv) -> dict[str, dict[str, list[bytes]]]:
    return {**search(env.url, PERSONNES, "(userCertificate=*)"), **search(env.url, STRUCTURES, "(userCertificate=*)")}


def _good_certificates(registry: Registry) -> set[bytes]:
    return {r.der for r in registry.iter_certificates() if r.status == "good" and r.der
            and r.profile not in ("ca", "ocsp-signing")}


def test_full_sync_publishes_every_good_certificate_and_relying_lookups_work(ldap_env: LdapEnv) -> None:
    env = ldap_env
    env.import_demo()
    manifest = json.loads((env.demo / "certs" / "manifest.json").read_text())
    revoked = [m for m in manifest if m["issuer"] == "ac-personnes" and m["profile"] == "encryption"][:2]
    for m in revoked:
        env.registry.revoke(m["issuer"], m["serial_hex"], "keyCompromise", actor="test")
    report = env.sync().full()
    assert not report.rejected and report.added > 0

    entries = _published(env)
    values = [v for e in entries.values() for v in e.get("userCertificate;binary", [])]
    assert sorted(values) == sorted(_good_certificates(env.registry))  # every good one, exactly once
    assert len(values) == len(set(values))
    for m in revoked:
        der = env.registry.get(m["issuer"], m["serial_hex"]).der  # type: ignore[union-attr]
        assert der not in values

    # a professional: by mail, by identifier, by certificate (certificateExactMatch), all with ldapsearch
    record = next(r for r in env.registry.iter_certificates() if r.profile == "authentication" and r.status == "good")
    cert = x509.load_der_x509_certificate(record.der)  # type: ignore[arg-type]
    by_mail = search(env.url, SUFFIX, f"(mail={record.emails[0]})")
    by_id = search(env.url, SUFFIX, f"(healthProfessionalId={record.professional_id})")
    issuer = cert.issuer.rfc4514_string()
    exact = search(env.url, SUFFIX, f'(userCertificate={{ serialNumber {cert.serial_number}, '
                                    f'issuer rdnSequence:"{issuer}" }})')
    assert len(by_mail) == len(by_id) == len(exact) == 1
    assert set(by_mail) == set(by_id) == set(exact)
    holder = next(iter(exact.values()))
    assert record.der in holder["userCertificate;binary"]
    assert holder["cn"] == [cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value.encode()]
    assert b"healthProfessional" in holder["objectClass"] and holder["healthIdentifierType"] == [b"RPPS"]

    # nothing changed: a second full pass writes nothing, verify finds nothing
    again = env.sync().full()
    assert again.writes() == 0 and again.drift.total() == 0
    result = run_cli("ldap", "verify", "-c", str(env.path), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["drift_total"] == 0


def test_ca_entries_hold_certificate_crl_arl_and_delta(demo: Path, tmp_path: Path) -> None:
    run_cli("crl", "build", "-c", str(demo), check=True)
    with serve(demo) as served:
        url = served.ldap_url
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cas = search(url, f"ou=AC,{SUFFIX}", "(objectClass=pkiCA)")
            if len(cas) == 3 and all("certificateRevocationList;binary" in e for e in cas.values()):
                break
            time.sleep(0.2)
        personnes = cas[f"cn=ac-personnes,ou=AC,{SUFFIX}"]
        root = cas[f"cn=ac-racine,ou=AC,{SUFFIX}"]
        data = demo.parent / "data" / "crl"
        assert personnes["cACertificate;binary"] == [x509.load_pem_x509_certificate(
            (demo.parent / "ca" / "ac-personnes.pem").read_bytes()).public_bytes(Encoding.DER)]
        assert personnes["certificateRevocationList;binary"] == [(data / "ac-personnes.crl").read_bytes()]
        assert personnes["deltaRevocationList;binary"] == [(data / "ac-personnes-delta.crl").read_bytes()]
        assert "authorityRevocationList;binary" not in personnes
        assert root["authorityRevocationList;binary"] == root["certificateRevocationList;binary"]
        crl_file = tmp_path / "from-ldap.crl"
        crl_file.write_bytes(personnes["certificateRevocationList;binary"][0])
        checked = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(crl_file), "-noout", "-CAfile",
                                  str(demo.parent / "ca" / "ac-personnes.pem")], capture_output=True, text=True)
        assert checked.returncode == 0 and "verify OK" in checked.stderr + checked.stdout, checked.stderr
        # a new CRL reaches the directory by itself (CRL publication enqueues the CA entry)
        before = personnes["certificateRevocationList;binary"][0]
        run_cli("crl", "build", "-c", str(demo), "--issuer", "ac-personnes", check=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            now = search(url, f"cn=ac-personnes,ou=AC,{SUFFIX}", scope="base")
            crl = now[f"cn=ac-personnes,ou=AC,{SUFFIX}"]["certificateRevocationList;binary"][0]
            if crl != before:
                break
            time.sleep(0.1)
        assert crl == (data / "ac-personnes.crl").read_bytes() != before


def test_revocation_removes_exactly_one_value_within_two_seconds(demo: Path) -> None:
    manifest = json.loads((demo.parent / "certs" / "manifest.json").read_text())
    with serve(demo) as served:
        url = served.ldap_url
        _wait(lambda: search(url, PERSONNES, "(userCertificate=*)"), timeout=15)  # the worker's first pass
        # a professional with three good card certificates
        holders = search(url, PERSONNES, "(userCertificate=*)")
        dn_, entry = next((d, e) for d, e in holders.items() if len(e["userCertificate;binary"]) == 3)
        victim = entry["userCertificate;binary"][1]
        cert = x509.load_der_x509_certificate(victim)
        issuer = next(m["issuer"] for m in manifest if int(m["serial_hex"], 16) == cert.serial_number)
        started = time.monotonic()
        run_cli("revoke", "-c", str(demo), "--issuer", issuer, "--serial", hex(cert.serial_number),
                "--reason", "keyCompromise", check=True)
        while True:
            values = search(url, dn_, scope="base")[dn_]["userCertificate;binary"]
            if victim not in values or time.monotonic() - started > 5:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        assert victim not in values and elapsed < 2.0, elapsed
        assert sorted(values) == sorted(v for v in entry["userCertificate;binary"] if v != victim)
        # a hold released puts the value back
        other = values[0]
        other_cert = x509.load_der_x509_certificate(other)
        run_cli("revoke", "-c", str(demo), "--issuer", issuer, "--serial", hex(other_cert.serial_number),
                "--reason", "certificateHold", check=True)
        _wait(lambda: other not in search(url, dn_, scope="base")[dn_]["userCertificate;binary"])
        run_cli("release-hold", "-c", str(demo), "--issuer", issuer, "--serial", hex(other_cert.serial_number),
                check=True)
        _wait(lambda: other in search(url, dn_, scope="base")[dn_]["userCertificate;binary"])
        # the last certificate of a holder going takes the entry with it
        for value in search(url, dn_, scope="base")[dn_]["userCertificate;binary"]:
            serial = x509.load_der_x509_certificate(value).serial_number
            run_cli("revoke", "-c", str(demo), "--issuer", issuer, "--serial", hex(serial), "--reason",
                    "cessationOfOperation", check=True)
        _wait(lambda: not search(url, dn_, scope="base"))
        # a CRL rebuilt after these revocations may be a moment ahead of the directory: it converges
        for _ in range(10):
            verify = run_cli("ldap", "verify", "-c", str(demo), "--json")
            if verify.returncode == 0:
                break
            time.sleep(0.3)
        assert verify.returncode == 0, verify.stdout + verify.stderr


def _wait(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_hand_edits_are_found_by_verify_and_repaired_by_full_sync(ldap_env: LdapEnv) -> None:
    env = ldap_env
    env.import_demo()
    env.sync().full()
    entries = search(env.url, PERSONNES, "(userCertificate=*)")
    (first_dn, first), (second_dn, _second), (third_dn, third) = list(entries.items())[:3]
    edits = [
        ("ldapmodify", f"dn: {first_dn}\nchangetype: modify\ndelete: userCertificate;binary\n"
                       f"userCertificate;binary:: {_b64(first['userCertificate;binary'][0])}\n"),
        ("ldapmodify", f"dn: {second_dn}\nchangetype: modify\nreplace: mail\nmail: intrus@example.org\n"
                       "-\nadd: description\ndescription: added by hand\n"),
        ("ldapdelete", f"{third_dn}\n"),
        ("ldapadd", f"dn: cn=Faux Docteur,{PERSONNES}\nobjectClass: inetOrgPerson\ncn: Faux Docteur\nsn: Docteur\n"),
    ]
    for tool, ldif in edits:
        done = ldap_tool(tool, env, ldif)
        assert done.returncode == 0, done.stderr
    verify = run_cli("ldap", "verify", "-c", str(env.path), "--json")
    assert verify.returncode == 1, verify.stdout + verify.stderr
    drift = json.loads(verify.stdout)["drift"]
    # the deleted entry's certificates count as missing with it
    assert drift == {"entries_missing": 1, "entries_extra": 1, "certificates_extra": 0, "attributes_differing": 2,
                     "certificates_missing": 1 + len(third["userCertificate;binary"])}
    assert search(env.url, f"cn=Faux Docteur,{PERSONNES}", scope="base")  # verify changed nothing
    repaired = run_cli("ldap", "sync", "--full", "-c", str(env.path), "--json")
    assert repaired.returncode == 0, repaired.stderr
    assert json.loads(repaired.stdout)["added"] == 1 and json.loads(repaired.stdout)["deleted"] == 1
    assert _unordered(search(env.url, PERSONNES, "(userCertificate=*)")) == _unordered(entries)
    assert not search(env.url, f"cn=Faux Docteur,{PERSONNES}", scope="base")
    assert run_cli("ldap", "verify", "-c", str(env.path)).returncode == 0


def _unordered(entries: dict[str, dict[str, list[bytes]]]) -> dict[str, dict[str, list[bytes]]]:
    return {d: {a: sorted(v) for a, v in e.items()} for d, e in entries.items()}


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def test_directory_down_keeps_changes_in_the_outbox_and_converges(ldap_env: LdapEnv) -> None:
    env = ldap_env
    env.import_demo()
    env.sync().full()
    records = [r for r in env.registry.iter_certificates() if r.status == "good" and r.profile == "signature"][:5]
    env.slapd.stop()
    for r in records:
        env.registry.revoke(r.issuer, r.serial_hex, "superseded", actor="test")
    depth = env.registry.ldap_outbox_stats()[0]
    assert depth == len(records)
    with pytest.raises(LdapUnavailable):
        env.sync().incremental()
    assert env.registry.ldap_outbox_stats()[0] == depth  # nothing lost while the directory is away
    result = run_cli("ldap", "sync", "-c", str(env.path))
    assert result.returncode == 1 and "directory" in result.stderr  # a clear refusal, not a traceback
    env.restart_slapd()
    report = env.sync().incremental()
    assert report.outbox_done == depth and report.modified == len(records) and not report.rejected
    assert env.registry.ldap_outbox_stats()[0] == 0
    values = {v for e in _published(env).values() for v in e["userCertificate;binary"]}
    assert values == _good_certificates(env.registry)
    # a replay of the same work is a no-op (idempotent)
    for r in records:
        env.registry.revoke(r.issuer, r.serial_hex, "keyCompromise", actor="test")  # superseded → keyCompromise
    assert env.sync().incremental().writes() == 0


def test_slapd_killed_mid_sync_converges_with_nothing_lost(ldap_env: LdapEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    env = ldap_env
    env.import_demo()
    import directory.ldap.writer as writer_module
    from directory.ldap.writer import PlanWriter

    monkeypatch.setattr(writer_module, "CHUNK", 10)
    calls = 0
    original = PlanWriter._operations

    def killing(self: PlanWriter, plans):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 3:
            env.slapd.kill()  # SIGKILL between two chunks: two chunks are in, the rest is not
        return original(self, plans)

    monkeypatch.setattr(PlanWriter, "_operations", killing)
    with pytest.raises(LdapUnavailable):
        env.sync().full()
    env.restart_slapd()
    partial = len(_published(env))
    assert partial > 0
    monkeypatch.setattr(PlanWriter, "_operations", original)
    report = env.sync().full()
    assert report.added > 0 and not report.rejected
    values = sorted(v for e in _published(env).values() for v in e["userCertificate;binary"])
    assert values == sorted(_good_certificates(env.registry))
    assert env.sync().verify().drift.total() == 0


def test_expired_certificates_leave_the_directory(ldap_env: LdapEnv) -> None:
    env = ldap_env
    env.import_demo()
    env.sync().full()
    assert _published(env)
    later = time.time() + 4 * 365 * 86400  # the demo's end entities live three years
    sync = DirectorySync(env.config, env.registry, clock=lambda: later)
    report = sync.incremental()
    assert report.deleted > 0 and not _published(env)
    assert sync.verify().drift.total() == 0


TRICKY = [
    'Dupont, Jean+"Jr" <a;b>=c\\d #1',
    " leading and trailing ",
    "#hash first",
    "Zoë Ñúñez-Łukasz 山田太郎",
    "*)(objectClass=*",
    "x,ou=AC,o=sante,c=fr",
]


def test_subjects_with_special_characters_make_correct_dns_and_filters(ldap_env: LdapEnv) -> None:
    env = ldap_env
    from directory.ingest.importer import Importer
    from directory.runtime import known_issuers

    importer = Importer(env.registry, known_issuers(env.config), actor="test")
    for n, cn in enumerate(TRICKY):
        subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                             x509.NameAttribute(NameOID.SERIAL_NUMBER, f"81000000{n:04d}"),
                             x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        importer.import_der(issue(env.config, "ac-personnes", subject, emails=(f"tricky{n}@demo.fr",)))
    report = env.sync().full()
    assert not report.rejected and report.added == len(TRICKY) + len(env.config.issuers)  # and the CA entries
    entries = search(env.url, PERSONNES, "(userCertificate=*)")
    assert len(entries) == len(TRICKY)  # no value escaped into another RDN, branch or entry
    assert not search(env.url, f"ou=AC,{SUFFIX}", "(cn=x)")
    for n, cn in enumerate(TRICKY):
        expected = dn.build([(("cn", cn), ("healthProfessionalId", f"81000000{n:04d}"))]) + "," + PERSONNES
        found = search(env.url, expected, scope="base")  # the DN we compute is the entry's DN
        assert len(found) == 1
        entry = next(iter(found.values()))
        assert dn.fold(entry["cn"][0].decode()) == dn.fold(cn)
        # the same value in a filter, escaped per RFC 4515, finds that entry and only it
        by_cn = search(env.url, PERSONNES, f"(cn={_filter_escape(cn)})")
        assert len(by_cn) == 1 and dn.key(next(iter(by_cn))) == dn.key(expected)
    assert env.sync().verify().drift.total() == 0


def _filter_escape(value: str) -> str:
    out = []
    for ch in value:
        out.append("".join(f"\\{b:02x}" for b in ch.encode()) if ch in "*()\\\x00" else ch)
    return "".join(out)


def test_changing_the_dn_template_moves_entries(ldap_env: LdapEnv) -> None:
    env = ldap_env
    env.import_demo()
    env.sync().full()
    before = search(env.url, PERSONNES, "(userCertificate=*)")
    text = env.path.read_text().replace("[ldap]\n", '[ldap]\nperson_dn = "uid={healthProfessionalId}"\n')
    env.path.write_text(text)
    from directory.config import load_config

    moved = DirectorySync(load_config(env.path), env.registry).incremental()  # a new layout forces a full pass
    assert moved.mode == "full" and moved.added == moved.deleted == len(before)
    after = search(env.url, PERSONNES, "(userCertificate=*)")
    assert all(d.startswith(("uid=8", "uid=0")) for d in after)  # 8 + RPPS, 0 + ADELI
    assert sorted(v for e in after.values() for v in e["userCertificate;binary"]) == \
        sorted(v for e in before.values() for v in e["userCertificate;binary"])


def test_a_certificate_no_template_can_place_is_reported(ldap_env: LdapEnv) -> None:
    env = ldap_env
    from directory.ingest.importer import Importer
    from directory.runtime import known_issuers

    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sans nom")])
    Importer(env.registry, known_issuers(env.config), actor="test").import_der(
        issue(env.config, "ac-personnes", subject, profile="signature"))
    synced = run_cli("ldap", "sync", "-c", str(env.path), "--json")
    assert synced.returncode == 0 and json.loads(synced.stdout)["unpublishable"] == 1, synced.stdout
    verify = run_cli("ldap", "verify", "-c", str(env.path))
    assert verify.returncode == 1 and "1 certificate no DN template fits" in verify.stdout, verify.stdout


def test_reads_are_paged_past_the_servers_size_limit(ldap_env: LdapEnv) -> None:
    """slapd's default size limit is 500 entries per search for a non-root DN: reconciliation must see all."""
    env = ldap_env
    from directory.ldap.client import Add
    from directory.ldap.sync import client_for

    client = client_for(env.config)
    results = client.apply([Add(f"cn=srv{n},{STRUCTURES}", {"objectClass": [b"device"], "cn": [f"srv{n}".encode()]})
                            for n in range(1200)])
    assert all(r.ok for r in results)
    seen = sum(1 for e in client.search(STRUCTURES, attributes=("cn",)) if e.dn != STRUCTURES)
    assert seen == 1200
    report = env.sync().full()  # none of these is in the registry: all removed, none missed
    assert report.deleted == 1200 and not search(env.url, STRUCTURES, "(objectClass=device)")
    client.close()


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (PEM files: ca, cert, key)."""
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test LDAP CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ldap")]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
              .not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return paths


def test_start_tls_with_a_checked_server_certificate(ldap_env: LdapEnv, tmp_path: Path) -> None:
    import dataclasses

    from directory.ldap.managed import ensure_skeleton

    env = ldap_env
    ca, cert, key = _tls_files(tmp_path)
    env.slapd.stop()
    # the same provider configuration with TLS on and password binds/writes refused in clear; the server's
    # files in slapd's own directory (run by root, slapd runs as an unprivileged user that owns it)
    directory = env.slapd.config.directory
    for source in (cert, key):
        shutil.copyfile(source, directory / source.name)
    server_cert, server_key = ((f.name if env.slapd.config.user else directory / f.name) for f in (cert, key))
    env.slapd.config.global_extra = (f"TLSCertificateFile {server_cert}\nTLSCertificateKeyFile {server_key}\n"
                                     "security simple_bind=128 update_tls=128")
    env.slapd.start()
    assert env.config.ldap is not None
    with pytest.raises(Exception):  # noqa: B017 - the clear-text skeleton bind is refused: TLS is required
        ensure_skeleton(env.slapd, env.config.ldap)
    env.import_demo()
    clear = dataclasses.replace(env.config, ldap=dataclasses.replace(env.config.ldap, start_tls=False))
    with pytest.raises(LdapError, match="confidentiality"):
        DirectorySync(clear, env.registry).full()
    wrong_ca = dataclasses.replace(env.config, ldap=dataclasses.replace(env.config.ldap, start_tls=True,
                                                                        tls_ca_file=cert))
    with pytest.raises(LdapUnavailable, match="TLS"):
        DirectorySync(wrong_ca, env.registry).full()
    good = dataclasses.replace(env.config, ldap=dataclasses.replace(env.config.ldap, start_tls=True,
                                                                    tls_ca_file=ca))
    report = DirectorySync(good, env.registry).full()
    assert report.added > 0 and not report.rejected
    assert search(env.url, PERSONNES, "(userCertificate=*)")  # anonymous reads in clear still work


def _workers(parent: int, command: str = "ldap worker") -> list[int]:
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(parent)], capture_output=True,
                         text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if command in line]


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # exited, not yet reaped by init
    except FileNotFoundError:
        return True


def test_the_sync_worker_is_restarted_and_never_outlives_the_service(demo: Path) -> None:
    import os
    import signal

    with serve(demo) as served:
        _wait(lambda: len(_workers(served.proc.pid)) == 1, timeout=15)
        first = _workers(served.proc.pid)
        os.kill(first[0], signal.SIGKILL)
        # one look per try: two could see the killed worker, then no worker at all (an empty list != first)
        _wait(lambda: (now := _workers(served.proc.pid)) != first and len(now) == 1, timeout=15)
        second = _workers(served.proc.pid)[0]
        slapd_pid = _workers(served.proc.pid, "slapd -f")[0]
        served.proc.kill()  # the service dies without a chance to stop its child
        served.proc.wait()
        _wait(lambda: _gone(second), timeout=15)
        _wait(lambda: _gone(slapd_pid), timeout=15)  # the managed slapd goes too
    assert "LDAP sync worker exited with -9; restarting" in served.output


def test_certificates_of_one_holder_with_different_attributes_are_merged(ldap_env: LdapEnv) -> None:
    """A renewed card with a new mail: one entry, both mails (multi-valued), both certificates."""
    env = ldap_env
    from directory.ingest.importer import Importer
    from directory.runtime import known_issuers

    importer = Importer(env.registry, known_issuers(env.config), actor="test")
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                         x509.NameAttribute(NameOID.SERIAL_NUMBER, "810000009999"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "Anne MARTIN")])
    old = issue(env.config, "ac-personnes", subject, emails=("anne.martin@old.demo.fr",))
    new = issue(env.config, "ac-personnes", subject, profile="signature", emails=("anne.martin@new.demo.fr",))
    importer.import_der(old)
    importer.import_der(new)
    report = env.sync().full()
    assert not report.rejected
    entries = search(env.url, PERSONNES, "(healthProfessionalId=810000009999)")
    assert len(entries) == 1
    entry = next(iter(entries.values()))
    assert sorted(entry["mail"]) == [b"anne.martin@new.demo.fr", b"anne.martin@old.demo.fr"]
    assert sorted(entry["userCertificate;binary"]) == sorted([old, new])
    assert env.sync().full().writes() == 0  # stable: the merge is the same every time


def test_a_long_lived_engine_still_sees_every_change_between_full_passes(ldap_env: LdapEnv) -> None:
    """The service's worker keeps one engine: entries found equal are not re-diffed while neither their
    registry inputs nor their directory bytes change. Any change to either must still be repaired."""
    env = ldap_env
    env.import_demo()
    sync = env.sync()
    sync.full()
    assert sync.full().writes() == 0
    entries = search(env.url, PERSONNES, "(userCertificate=*)")
    (dn_a, a), (dn_b, b) = list(entries.items())[:2]
    assert ldap_tool("ldapmodify", env, f"dn: {dn_a}\nchangetype: modify\ndelete: userCertificate;binary\n"
                                        f"userCertificate;binary:: {_b64(a['userCertificate;binary'][0])}\n"
                     ).returncode == 0
    victim = x509.load_der_x509_certificate(b["userCertificate;binary"][0])
    record = next(r for r in env.registry.iter_certificates() if r.der == b["userCertificate;binary"][0])
    env.registry.revoke(record.issuer, record.serial_hex, "affiliationChanged", actor="test")  # outbox not drained
    report = sync.full()
    assert report.modified == 2 and report.drift.certificates_missing == 1 and report.drift.certificates_extra == 1
    after = search(env.url, PERSONNES, "(userCertificate=*)")
    assert sorted(after[dn_a]["userCertificate;binary"]) == sorted(a["userCertificate;binary"])
    assert victim.public_bytes(Encoding.DER) not in after[dn_b]["userCertificate;binary"]
    assert sync.full().writes() == 0 and sync.verify().drift.total() == 0


def test_a_stalled_directory_counts_as_down_and_nothing_is_lost(ldap_env: LdapEnv) -> None:
    import dataclasses
    import os
    import signal

    env = ldap_env
    env.import_demo()
    assert env.config.ldap is not None
    config = dataclasses.replace(env.config, ldap=dataclasses.replace(env.config.ldap, timeout=1.0))
    DirectorySync(config, env.registry).full()
    record = next(r for r in env.registry.iter_certificates() if r.status == "good" and r.profile == "encryption")
    env.registry.revoke(record.issuer, record.serial_hex, "keyCompromise", actor="test")
    assert env.slapd.process is not None
    os.kill(env.slapd.process.pid, signal.SIGSTOP)  # alive, listening, answering nothing
    try:
        started = time.monotonic()
        with pytest.raises(LdapUnavailable):
            DirectorySync(config, env.registry).incremental()
        assert time.monotonic() - started < 5
        assert env.registry.ldap_outbox_stats()[0] == 1
    finally:
        os.kill(env.slapd.process.pid, signal.SIGCONT)
    report = DirectorySync(config, env.registry).incremental()
    assert report.modified == 1 and env.registry.ldap_outbox_stats()[0] == 0
    assert record.der not in {v for e in _published(env).values() for v in e["userCertificate;binary"]}
