"""``annuaire ldap export --ldif`` loaded by ``slapadd -q`` into a fresh slapd holds exactly what the online
sync writes into another (compared with ldapsearch); afterwards the sync finds nothing to do."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from directory.config import Config, load_config
from directory.ingest.importer import Importer
from directory.ldap import ldif
from directory.ldap.managed import ensure_skeleton, managed_slapd
from directory.ldap.slapd import Slapd, unprivileged_user
from directory.ldap.sync import DirectorySync
from directory.runtime import known_issuers
from tests.conftest import ANNUAIRE, ROOT, free_port, run_cli
from tests.ldap_env import SUFFIX, LdapEnv, issue, search

# names that need base64 in LDIF (RFC 2849: a leading space, ':' or '<', a trailing space, non-ASCII),
# RFC 4514 escapes in the DN, and lines long enough to be folded
ADVERSARIAL = [
    "Élodie Lefèvre",
    " leading and trailing ",
    ":colon first",
    "<angle first",
    'Dupont, Jean+"Jr" <a;b>=c\\d #1',
    "Zoë Ñúñez-Łukasz 山田太郎",
    "x" * 34 + " long enough to fold lines",  # (64: the CN limit)
]


def _import_adversarial(env: LdapEnv) -> None:
    importer = Importer(env.registry, known_issuers(env.config), actor="test")
    for n, cn in enumerate(ADVERSARIAL):
        person = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                            x509.NameAttribute(NameOID.TITLE, " Médecin:" if n % 2 else "<Pharmacien "),
                            x509.NameAttribute(NameOID.SERIAL_NUMBER, f"81000000{n:04d}"),
                            x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        importer.import_der(issue(env.config, "ac-personnes", person, emails=(f"adv{n}@demo.fr",)))
        server = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f":{cn}"[:64]),
                            x509.NameAttribute(NameOID.COMMON_NAME, f"srv{n}.{cn}"[:64])])
        importer.import_der(issue(env.config, "ac-structures", server, profile="server-tls"))


def _second_directory(env: LdapEnv, name: str) -> tuple[Config, Slapd]:
    """Another managed slapd (its own data folder and port) on the same registry and CRLs; not started."""
    text = env.path.read_text()
    registry = f"sqlite:///{env.config.data_dir / 'registry.sqlite3'}"
    text = text.replace("[hsm]", f'[registry]\nurl = "{registry}"\n\n[hsm]', 1)
    text = re.sub(r'"ldap://127\.0\.0\.1:\d+"', f'"ldap://127.0.0.1:{free_port()}"', text)
    text = re.sub(r'data_dir = "[^"]*"', f'data_dir = "{env.path.parent / name}"', text)
    path = env.path.parent / f"{name}.toml"
    path.write_text(text)
    (env.path.parent / name).mkdir()
    (env.path.parent / name / "crl").symlink_to(env.config.data_dir / "crl")  # the CA entries' CRLs
    config = load_config(path)
    assert config.registry_location() == env.config.registry_location()
    return config, managed_slapd(config)


def _bulk_load(slapd: Slapd, ldif_file: Path) -> None:
    """The documented steps: slapadd -q into the stopped, empty database, then its files to slapd's user."""
    slapd.write_config()
    result = subprocess.run(["slapadd", "-q", "-f", slapd.conf_file.name, "-l", str(ldif_file)],
                            capture_output=True, text=True, cwd=slapd.config.directory)  # its paths are relative
    assert result.returncode == 0, result.stderr
    user = unprivileged_user()
    if user:
        subprocess.run(["chown", "-R", f"{user}:{user}", str(slapd.config.directory / "data")], check=True)


def _everything(url: str, config: Config) -> dict[str, dict[str, list[bytes]]]:
    """Every entry under the suffix with its user attributes (as the service reads them), values sorted;
    the bind entry's password hash left out (salted anew at each start)."""
    assert config.ldap is not None
    found = search(url, SUFFIX, bind=(config.ldap.bind_dn, config.ldap.read_password()))
    return {d: {a: sorted(v) for a, v in attrs.items() if a != "userPassword"} for d, attrs in found.items()}


@pytest.mark.parametrize("layout", ["flat", "containers"])
def test_slapadd_of_the_export_equals_the_online_sync(ldap_env: LdapEnv, layout: str) -> None:
    env = ldap_env
    if layout == "containers":  # professionals under title=…, an intermediate entry per title
        templates = '["cn={CN}+healthProfessionalId={serialNumber},title={title}", "cn={CN}"]'
        text = env.path.read_text().replace("[ldap]\n", f"[ldap]\nperson_dn = {templates}\n")
        env.path.write_text(text)
        env.config = load_config(env.path)
    run_cli("crl", "build", "-c", str(env.path), check=True)  # CA entries with their CRLs (and deltas)
    env.import_demo()
    _import_adversarial(env)
    online = env.sync().full()
    assert not online.rejected and online.added > 0

    # export while the outbox still holds rows: --mark-synced settles them
    revoked = next(r for r in env.registry.iter_certificates() if r.status == "good" and r.profile == "encryption")
    env.registry.revoke(revoked.issuer, revoked.serial_hex, "keyCompromise", actor="test")
    env.sync().incremental()
    assert env.registry.ldap_outbox_stats()[0] == 0
    env.registry.state_set({"layout": ""})  # as a registry never synced
    out = env.path.parent / "export.ldif"
    result = run_cli("ldap", "export", "--ldif", "-c", str(env.path), "--output", str(out), "--mark-synced", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["marked"] and report["ca_entries"] == len(env.config.issuers)
    assert report["intermediate"] > 0 if layout == "containers" else report["intermediate"] == 0
    assert os.stat(out).st_mode & 0o077 == 0  # private, like everything the service writes

    config_b, slapd_b = _second_directory(env, "bulk")
    _bulk_load(slapd_b, out)
    slapd_b.start()
    try:
        ensure_skeleton(slapd_b, config_b.ldap)  # what `annuaire serve` does at start: adds the bind entry
        a, b = _everything(env.url, env.config), _everything(slapd_b.config.url, config_b)
        assert a.keys() == b.keys() and a == b
        assert report["entries"] == len(b) - 1  # all but the bind entry
        crls = [e for e in b.values() if "certificateRevocationList;binary" in e]
        assert crls and all(e["cACertificate;binary"] for e in crls)
        for cn in ADVERSARIAL:
            assert any(cn.encode() in e.get("cn", []) for e in b.values()), cn
        # the online sync takes over: nothing to write, nothing differs
        sync = DirectorySync(config_b, env.registry)
        first = sync.incremental()
        assert first.mode == "incremental" and first.outbox_done == 0 and first.writes() == 0
        full = sync.full()
        assert full.writes() == 0 and full.drift.total() == 0 and not full.rejected
        assert run_cli("ldap", "verify", "-c", str(config_b.path)).returncode == 0
        # and goes on from there: a revocation reaches the bulk-loaded directory
        record = next(r for r in env.registry.iter_certificates() if r.status == "good" and r.profile == "encryption")
        env.registry.revoke(record.issuer, record.serial_hex, "keyCompromise", actor="test")
        later = sync.incremental()
        assert later.modified + later.deleted == 1
        assert not search(slapd_b.config.url, SUFFIX, f"(userCertificate;binary={_escaped(record.der)})")
    finally:
        slapd_b.stop()


def _escaped(der: bytes | None) -> str:
    assert der is not None
    return "".join(f"\\{b:02x}" for b in der)


def test_export_to_standard_output_and_refusals(ldap_env: LdapEnv, tmp_path: Path) -> None:
    env = ldap_env
    env.import_demo()
    result = run_cli("ldap", "export", "--ldif", "-c", str(env.path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# annuaire") and "dn: ou=Personnes,o=sante,c=fr" in result.stdout
    assert "ldap export:" in result.stderr and "registry left as it was" in result.stderr
    assert env.registry.state_get("layout") in (None, "")  # not marked without --mark-synced
    # the reader gone (slapadd failed): the export fails, and marks nothing
    read, write = os.pipe()
    os.close(read)
    broken = subprocess.run([*ANNUAIRE, "ldap", "export", "--ldif", "--mark-synced", "-c", str(env.path)],
                            stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    os.close(write)
    assert broken.returncode == 1 and "cannot write standard output" in broken.stderr, broken.stderr
    assert env.registry.state_get("layout") in (None, "")
    assert "\ndn: o=sante,c=fr\n" in result.stdout and "userPassword" not in result.stdout
    # after deploy/slapd/seed.ldif (the suffix), or into a directory without the service's bind entry
    seeded = run_cli("ldap", "export", "--ldif", "--without-suffix", "--bind-entry", "-c", str(env.path))
    assert seeded.returncode == 0, seeded.stderr
    assert "\ndn: o=sante,c=fr\n" not in seeded.stdout and "\ndn: cn=annuaire,o=sante,c=fr\n" in seeded.stdout
    hashed = re.search(r"^userPassword:: (\S+)$", seeded.stdout, re.MULTILINE)  # '{' is safe: base64 as all
    assert hashed is None or base64.b64decode(hashed.group(1)).startswith(b"{")
    assert re.search(r"^userPassword: \{(ARGON2|SSHA)\}", seeded.stdout, re.MULTILINE) or hashed
    assert env.password() not in seeded.stdout
    # the format is a required flag (room for others); --json needs a file (stdout carries the LDIF)
    assert run_cli("ldap", "export", "-c", str(env.path)).returncode == 2
    assert run_cli("ldap", "export", "--ldif", "--json", "-c", str(env.path)).returncode == 2
    # an unwritable target: refused, and a previous file is left whole
    previous = tmp_path / "kept.ldif"
    previous.write_text("previous\n")
    previous.parent.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anyway: only the missing folder below is refused then
            refused = run_cli("ldap", "export", "--ldif", "-c", str(env.path), "-o", str(previous))
            assert refused.returncode == 1 and "refused: cannot write" in refused.stderr
    finally:
        previous.parent.chmod(0o700)
    missing = run_cli("ldap", "export", "--ldif", "-c", str(env.path), "-o", str(tmp_path / "no" / "such.ldif"),
                      "--json")
    assert missing.returncode == 1 and "cannot write" in missing.stderr
    assert json.loads(missing.stdout)["ok"] is False
    assert previous.read_text() == "previous\n"
    # a target that is not a regular file (a named pipe into slapadd, /dev/null) is written to, never replaced:
    # renaming over /dev/null once left the host with a private regular file in its place
    fifo = tmp_path / "to-slapadd"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    piped = run_cli("ldap", "export", "--ldif", "-c", str(env.path), "-o", str(fifo))
    reader.join(30)
    assert piped.returncode == 0, piped.stderr
    entries = received[0].decode()
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert entries[entries.index("\ndn: "):] == result.stdout[result.stdout.index("\ndn: "):]  # header: its time
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("value", [b"", b"plain", b" space", b":colon", b"<lt", b"trail ", b"\xc3\x89lodie",
                                   b"line\nbreak", b"nul\x00", b"cr\r", b"a" * 200, bytes(range(256))])
def test_ldif_values_round_trip(value: bytes) -> None:
    text = ldif.record("cn=x,o=sante,c=fr", {"description": [value]}).decode("ascii")
    assert text.endswith("\n\n") and not text.endswith("\n\n\n")
    assert all(len(row) <= ldif.WIDTH for row in text.splitlines())
    unfolded = re.sub(r"\n ", "", text)
    row = unfolded.splitlines()[1]
    if row.startswith("description:: "):
        assert base64.b64decode(row[len("description:: "):]) == value
        assert not ldif.safe(value)
    else:
        assert row == "description: " + value.decode() and ldif.safe(value)


def _folded_by_slicing(text: bytes) -> bytes:
    """The plain definition of folding (RFC 2849): the first WIDTH bytes, then WIDTH - 1 a line."""
    step = ldif.WIDTH - 1
    return b"\n ".join([text[:ldif.WIDTH], *(text[i:i + step] for i in range(ldif.WIDTH, len(text), step))])


def test_ldif_folds_of_every_length_match_slicing() -> None:
    """The cached struct cuts give the same lines as slicing, at every length around the line boundaries and
    beyond the cached range (a CRL), for text and base64 values, and the record unfolds to the values."""
    values = [bytes([0x41 + n % 26]) * n for n in range(0, 400)] + [os.urandom(n) for n in (1, 57, 58, 1040)]
    values += [b"z" * ((1 << 16) + 3), os.urandom(70_000)]
    for value in values:
        text = ldif.record("cn=x", {"userCertificate;binary": [value], "description": [value]})
        rows = text.decode("ascii").split("\n")
        assert all(len(row) <= ldif.WIDTH for row in rows)
        expected = [ldif.line("dn", b"cn=x")]
        for name in ("userCertificate;binary", "description"):
            if ldif.safe(value):
                line = name.encode() + b": " + value
            else:
                line = name.encode() + b":: " + base64.b64encode(value)
            expected.append(line if len(line) <= ldif.WIDTH else _folded_by_slicing(line))
        assert text == b"\n".join([*expected, b"\n"])


def test_bench_ldif_tiny() -> None:
    """bench/ldif.py at its tiny size (benchmarks cannot rot): its JSON line, and the load checked."""
    result = subprocess.run([sys.executable, "-m", "bench.ldif", "--tiny"], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.splitlines()[-1])
    assert figures["bench"] == "ldif" and figures["tiny"] is True
    assert figures["entries"] > 20 and figures["certificates"] > 20
    assert figures["export_s"] > 0 and figures["ldapadd_s"] > 0 and figures["ratio"] > 0
    assert figures["cpu_export_s"] > 0 and figures["cpu_ratio"] > 0
    assert 0 < figures["piped_loaded_s"] <= figures["piped_s"] and len(figures["load_average"]) == 2
    assert figures["verify_drift"] == 0 and figures["takeover_writes"] == 0


def test_published_rows_in_pages_on_both_backends(registry_location: str) -> None:
    """The export's read: every published row once, ordered by entry, whatever the page size (entries of
    three certificates straddle pages of seven rows); revoked and expired certificates left out."""
    from directory.registry import Registry
    from tests.test_registry_backends import NOW, _info

    registry = Registry(registry_location, clock=lambda: float(NOW))
    try:
        registry.ensure_issuer("ca", b"subject", b"cert")
        registry.import_certificates("ca", [_info(n) for n in range(1, 61)])
        registry.ldap_project_serials("L", "ca", [(format(n, "x"), f"k{n // 3:02d}", f"cn=e{n // 3}", "{}")
                                                  for n in range(1, 61)])
        registry.revoke("ca", "5", "keyCompromise")
        rows, after = [], None
        while page := registry.ldap_published_page("L", NOW, after, 7):
            assert len(page) <= 7
            rows += page
            after = (page[-1][0], page[-1][3])
        assert len(rows) == 59 and len({r[3] for r in rows}) == 59
        assert [(r[0], r[3]) for r in rows] == sorted((r[0], r[3]) for r in rows)
        assert [r[0] for r in rows] == sorted(r[0] for r in registry.ldap_published("L", NOW))
        assert not registry.ldap_published_page("L", NOW + 86400 * 366, None, 7)  # all expired by then
    finally:
        registry.close()
