"""Review of the read ahead (issue 15): a revocation committed by another process at each point of the
read ahead is listed by the CRL, or is after its number (then in its change sequence's future)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from directory.crl import readahead
from directory.crl.readahead import ReadAhead
from tests.conftest import run_cli
from tests.test_crl_readahead import ISSUER, _good_serials, _listed, parts  # noqa: F401


def _revoke_by_cli(demo: Path, serial: str) -> None:
    run_cli("revoke", "--config", str(demo), "--issuer", ISSUER, "--serial", serial, "--reason", "superseded",
            check=True)


def _hooked(monkeypatch: pytest.MonkeyPatch, when: str, action) -> list[str]:
    """The read ahead's connection runs ``action`` once, after its statement starting with ``when``."""
    done: list[str] = []

    class Hooked(sqlite3.Connection):
        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
            cur = super().execute(sql, *args)
            if not done and sql.startswith(when):
                done.append(sql)
                action()
            return cur

    real = sqlite3.connect

    def connect(database: str, *args: object, **kwargs: object) -> sqlite3.Connection:
        if kwargs.get("uri"):  # the read ahead's (the registry's are not hooked)
            kwargs["factory"] = Hooked
        return real(database, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(readahead.sqlite3, "connect", connect)
    return done


@pytest.mark.parametrize("when", ["BEGIN", "SELECT id FROM issuers", "SELECT COALESCE", "SELECT (SELECT MIN",
                                  "SELECT COUNT"])
def test_a_revocation_by_another_process_during_the_read_ahead_is_listed(parts, monkeypatch, when,  # noqa: F811
                                                                        caplog) -> None:
    demo, registry, publisher = parts
    serial = _good_serials(demo)[0]
    caplog.set_level(logging.DEBUG, logger="directory.crl")
    done = _hooked(monkeypatch, when, lambda: _revoke_by_cli(demo, serial))
    publisher.read_ahead = ReadAhead(registry.path, ISSUER, False)
    crl = publisher.publish(publisher.full_targets()[0])
    assert done
    assert int(serial, 16) in _listed(crl.path)
    assert crl.entries == len(_listed(crl.path))
    assert [c[2] for c in registry.changes_after(crl.record.change_seq)] == []
    # before the first read (BEGIN): in the snapshot, used; after it: refused, read again
    assert ("reading ahead" in caplog.text) == (when == "BEGIN"), caplog.text


def test_the_read_ahead_leaves_no_thread_nor_transaction_when_the_command_fails(demo: Path, monkeypatch) -> None:
    import gc
    import sys

    from directory.cli import main
    from directory.crl import builder

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(builder, "publishers_for", boom)
    opened: list[ReadAhead] = []
    real_start = readahead.start
    monkeypatch.setattr(readahead, "start", lambda *a: opened.append(real_start(*a)) or opened[-1])
    interval = sys.getswitchinterval()
    with pytest.raises(RuntimeError, match="boom"):
        main(["crl", "build", "--config", str(demo), "--issuer", ISSUER])
    assert opened and opened[0] is not None and opened[0]._conn is None
    assert gc.isenabled() and sys.getswitchinterval() == interval
    assert not [t for t in threading.enumerate() if t.name == "crl-read"]


def test_a_crl_built_after_another_is_not_dated_before_it(parts) -> None:  # noqa: F811
    """The read ahead refused (another CRL numbered meanwhile, by the service): the CRL built instead, numbered
    after that one, is not dated before it (its thisUpdate is not the read ahead's, taken as the command started)."""
    import time

    _, registry, publisher = parts
    ahead = ReadAhead(registry.path, ISSUER, False)
    ahead.reader.join()
    time.sleep(1.1)
    other = publisher.publish(publisher.full_targets()[0])  # the service's CRL, one second later
    publisher.read_ahead = ahead
    crl = publisher.publish(publisher.full_targets()[0])
    assert crl.record.number == other.record.number + 1
    assert crl.this_update >= other.this_update


@pytest.mark.parametrize("when", ["BEGIN", "SELECT COUNT"])
def test_crl_build_of_every_issuer_with_partitions_and_deltas(demo: Path, monkeypatch, when) -> None:
    """The whole command (two issuers, partitions, a delta): the read ahead serves the first full CRL only; a
    revocation by another process during the read is on the full CRL and on its partition's; numbers go up."""
    import json

    from asn1crypto import crl as acrl

    from directory.cli import main
    from directory.publication import partition_key

    demo.write_text(demo.read_text().replace("delta = true\n", "delta = true\npartitions = 2\n", 1))
    serial = _good_serials(demo)[0]
    done = _hooked(monkeypatch, when, lambda: _revoke_by_cli(demo, serial))
    crl_dir = demo.parent / "data" / "crl"
    part = partition_key(int(serial, 16)) % 2
    assert main(["crl", "build", "--config", str(demo)]) == 0
    assert len(done) == 1
    assert int(serial, 16) in _listed(crl_dir / f"{ISSUER}.crl")
    assert int(serial, 16) in _listed(crl_dir / f"{ISSUER}-p{part}.crl")
    again = run_cli("crl", "build", "--config", str(demo), "--json", check=True)  # read ahead, nothing revoked
    built = json.loads(again.stdout)
    kinds = [(b["issuer"], b["kind"], b["file"].rsplit("/", 1)[1]) for b in built]
    assert kinds == [(ISSUER, "full", f"{ISSUER}.crl"), (ISSUER, "full", f"{ISSUER}-p0.crl"),
                     (ISSUER, "full", f"{ISSUER}-p1.crl"), (ISSUER, "delta", f"{ISSUER}-delta.crl"),
                     ("ac-structures", "full", "ac-structures.crl")]
    assert int(serial, 16) in _listed(crl_dir / f"{ISSUER}.crl")
    full = acrl.CertificateList.load((crl_dir / f"{ISSUER}.crl").read_bytes())
    delta = acrl.CertificateList.load((crl_dir / f"{ISSUER}-delta.crl").read_bytes())
    assert full.crl_number_value.native < delta.crl_number_value.native
    assert delta.delta_crl_indicator_value.native == full.crl_number_value.native


def test_expired_entries_are_cut_at_the_thisupdate_the_read_ahead_build_writes(parts) -> None:  # noqa: F811
    """The read ahead's cut-off is the thisUpdate its CRL is given: a certificate expired a second before it
    is dropped, one expiring at it is kept, as a build that reads after numbering at that instant does."""
    import time

    from asn1crypto import crl as acrl

    _, registry, publisher = parts
    at = int(time.time())
    conn = sqlite3.connect(registry.path)
    ids = [r[0] for r in conn.execute("SELECT certificate_id FROM crl_entries ORDER BY certificate_id LIMIT 2")]
    with conn:
        conn.execute("UPDATE crl_entries SET not_after = ? WHERE certificate_id = ?", (at - 1, ids[0]))
        conn.execute("UPDATE crl_entries SET not_after = ? WHERE certificate_id = ?", (at, ids[1]))
    conn.close()
    publisher.read_ahead = ReadAhead(registry.path, ISSUER, False, now=at)
    ahead = publisher.publish(publisher.full_targets()[0])
    data = ahead.path.read_bytes()
    publisher.clock = lambda: float(at)
    usual = publisher.publish(publisher.full_targets()[0])
    assert ahead.this_update == usual.this_update == at
    assert ahead.entries == usual.entries == len(_listed(ahead.path))
    entries = [acrl.CertificateList.load(d)["tbs_cert_list"]["revoked_certificates"].dump()
               for d in (data, usual.path.read_bytes())]
    assert entries[0] == entries[1]


def test_a_held_write_lock_at_numbering_falls_back_without_waiting(parts) -> None:  # noqa: F811
    """Another connection holds the write lock (a revocation under way) when the number would be allocated in
    the read's snapshot: refused (SQLite runs no busy handler for a read transaction's upgrade), not an error:
    the build numbers as usual once the lock is released."""
    import time

    _, registry, publisher = parts
    ahead = ReadAhead(registry.path, ISSUER, False)
    ahead.reader.join()
    other = sqlite3.connect(registry.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE issuers SET name = name")

    def release() -> None:
        time.sleep(1.0)
        other.execute("ROLLBACK")
        other.close()

    thread = threading.Thread(target=release)
    thread.start()
    publisher.read_ahead = ahead
    started = time.monotonic()
    crl = publisher.publish(publisher.full_targets()[0])
    thread.join()
    assert 0.9 < time.monotonic() - started < 25
    assert crl.record.number == registry.crl_last_number(ISSUER)


def test_a_number_allocated_in_the_read_ahead_is_burnt_by_a_crash(demo: Path) -> None:
    """The process dies once its number is allocated in the read ahead's transaction (while signing): the
    number stays allocated ('building'), the next build takes the one after it."""
    code = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from directory.config.load import load_config
from directory.crl.builder import opened, publishers_for
from directory.crl.readahead import ReadAhead
from directory.runtime import open_config_registry, open_hsm
config = load_config({str(demo)!r})
registry = open_config_registry(config)
publisher = publishers_for(config, opened(open_hsm(config)), registry)[{ISSUER!r}]
publisher.read_ahead = ReadAhead(registry.path, {ISSUER!r}, False)
publisher.on_stage = lambda text: os._exit(9) if "signing" in text else None
publisher.publish(publisher.full_targets()[0])
"""
    import json
    import os
    import subprocess
    import sys

    env = {"SOFTHSM2_CONF": str(demo.parent / "hsm" / "softhsm2.conf")}
    run_cli("crl", "build", "--config", str(demo), "--issuer", ISSUER, check=True)
    conn = sqlite3.connect(demo.parent / "data" / "registry.sqlite3")
    before = conn.execute("SELECT last_crl_number FROM issuers WHERE name = ?", (ISSUER,)).fetchone()[0]
    died = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)
    assert died.returncode == 9, died.stderr
    rows = conn.execute("SELECT number, state FROM crls c JOIN issuers i ON i.id = c.issuer_id WHERE i.name = ? "
                        "AND scope = 'main' AND number > ? ORDER BY number", (ISSUER, before)).fetchall()
    assert rows == [(before + 1, "building")]
    result = run_cli("crl", "build", "--config", str(demo), "--issuer", ISSUER, "--json", check=True)
    numbers = [b["number"] for b in json.loads(result.stdout) if b["kind"] == "full"]
    assert numbers == [before + 2]
    conn.close()


def test_a_registry_not_in_wal_mode_is_not_read_ahead(demo: Path) -> None:
    """A registry left in rollback-journal mode (copied, restored): the read ahead is dropped, the build reads
    as usual (the registry's opening puts it in WAL mode) and lists a revocation made just before."""
    registry = demo.parent / "data" / "registry.sqlite3"
    serial = _good_serials(demo)[0]
    _revoke_by_cli(demo, serial)
    conn = sqlite3.connect(registry)
    assert conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    conn.close()
    result = run_cli("--log-level", "DEBUG", "crl", "build", "--config", str(demo), "--issuer", ISSUER)
    assert result.returncode == 0, result.stderr
    # dropped, unless the registry's opening (WAL) came first, ~0.1 s after the read ahead began
    assert ("not in WAL mode" in result.stderr) != ("reading ahead" in result.stderr), result.stderr
    assert int(serial, 16) in _listed(demo.parent / "data" / "crl" / f"{ISSUER}.crl")


@pytest.mark.parametrize("link_dir", [False, True])
def test_a_symlinked_registry_is_one_database_for_the_read_ahead(demo: Path, tmp_path: Path, caplog,
                                                                link_dir: bool) -> None:
    """The read ahead opens the resolved path, the registry and `annuaire revoke` the symlink (to the file,
    or to its folder): one database and one WAL, so a revocation through the symlink after the read began
    makes the read ahead's numbering refused, and the CRL lists it."""
    data = demo.parent / "data"
    link = tmp_path / "link"
    if link_dir:
        link.symlink_to(data, target_is_directory=True)
        url = link / "registry.sqlite3"
    else:
        link.symlink_to(data / "registry.sqlite3")
        url = link
    demo.write_text(demo.read_text().replace("[hsm]", f'[registry]\nurl = "sqlite:///{url}"\n\n[hsm]', 1))
    from directory.config.load import load_config
    from directory.crl.builder import opened, publishers_for
    from directory.runtime import open_config_registry, open_hsm

    config = load_config(demo)
    registry = open_config_registry(config)
    hsm = open_hsm(config)
    caplog.set_level(logging.DEBUG, logger="directory.crl")
    try:
        publisher = publishers_for(config, opened(hsm), registry)[ISSUER]
        ahead = readahead.start(demo, ISSUER)
        assert ahead is not None and ahead.path == url
        ahead.reader.join()
        serial = _good_serials(demo)[0]
        _revoke_by_cli(demo, serial)
        publisher.read_ahead = ahead
        crl = publisher.publish(publisher.full_targets()[0])
        assert int(serial, 16) in _listed(crl.path)
        assert "read again" in caplog.text
    finally:
        hsm.close()
        registry.close()


def test_two_read_aheads_of_one_snapshot_never_share_a_number(parts, caplog) -> None:  # noqa: F811
    """Two `crl build` at once, both read ahead before either numbered: the second's numbering in its (now
    stale) snapshot is refused, it numbers as usual after the first; numbers only go up."""
    _, registry, publisher = parts
    caplog.set_level(logging.DEBUG, logger="directory.crl")
    first, second = ReadAhead(registry.path, ISSUER, False), ReadAhead(registry.path, ISSUER, False)
    first.reader.join()
    second.reader.join()
    publisher.read_ahead = first
    one = publisher.publish(publisher.full_targets()[0])
    assert "reading ahead" in caplog.text
    publisher.read_ahead = second
    two = publisher.publish(publisher.full_targets()[0])
    assert "read again" in caplog.text
    assert two.record.number == one.record.number + 1 == registry.crl_last_number(ISSUER)
