"""`crl build` reads its first CRL's entries while it starts (``crl.readahead``): only what the build would
read is used, in one view with the CRL number, and a read that fails fails the build with nothing written."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from asn1crypto import crl as acrl

from directory.config.load import load_config
from directory.crl import readahead
from directory.crl.builder import CrlBuildError, CrlPublisher, opened, publishers_for
from directory.crl.readahead import ReadAhead
from directory.registry.snapshot import CrlSnapshot
from directory.runtime import open_config_registry, open_hsm
from tests.conftest import run_cli

ISSUER = "ac-personnes"


def _good_serials(config: Path) -> list[str]:
    manifest = json.loads((config.parent / "certs" / "manifest.json").read_text())
    return [c["serial_hex"] for c in manifest if c["issuer"] == ISSUER and c["status"] == "good"]


def _listed(path: Path) -> set[int]:
    return {r["user_certificate"].native for r in acrl.CertificateList.load(path.read_bytes())
            ["tbs_cert_list"]["revoked_certificates"]}


@pytest.fixture()
def parts(demo: Path) -> Iterator[tuple[Path, object, CrlPublisher]]:
    """The demo's registry and ``ISSUER``'s publisher (the HSM open)."""
    config = load_config(demo)
    registry = open_config_registry(config)
    hsm = open_hsm(config)
    try:
        yield demo, registry, publishers_for(config, opened(hsm), registry)[ISSUER]
    finally:
        hsm.close()
        registry.close()


def test_the_read_begins_before_the_heavy_imports() -> None:
    """The command line and the read ahead import neither ``cryptography`` (nor python-pkcs11, asn1crypto)
    nor the configuration nor the registry's store: those come while the entries are read."""
    code = ("import sys, directory.cli, directory.crl.readahead; print(sorted(m for m in sys.modules if "
            "m.split('.')[0] in ('cryptography', 'pkcs11', 'asn1crypto') "
            "or m.startswith(('directory.config', 'directory.registry.store'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_start_reads_where_the_configuration_file_says(demo: Path, tmp_path: Path) -> None:
    """The first issuer with a key (or --issuer's), its registry file, its keep_expired; None when the file
    does not say plainly (PostgreSQL, an issuer without a key here, no file)."""
    ahead = readahead.start(demo, None)
    assert ahead is not None
    try:
        assert (ahead.path.resolve(), ahead.issuer, ahead.keep_expired) == (
            (demo.parent / "data" / "registry.sqlite3").resolve(), ISSUER, False)
    finally:
        ahead.close()
    other = readahead.start(demo, "ac-structures")
    assert other is not None and other.issuer == "ac-structures"
    other.close()
    assert readahead.start(demo, "ac-racine") is None  # offline: no CRL built here
    assert readahead.start(tmp_path / "missing.toml", None) is None
    pg = tmp_path / "pg.toml"
    pg.write_text(demo.read_text().replace("[hsm]", '[registry]\nurl = "postgresql://u@h/db"\n\n[hsm]', 1))
    assert readahead.start(pg, None) is None


def test_the_command_line_says_where_to_read_before_it_is_parsed(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` begins `crl build`'s read from the words alone, before any parser is made
    (``cli.crl.plain_build``): only plain spellings, which the full parser reads as `crl build` and the crl
    group's parser alone reads the same; anything else begins nothing here (the command begins its read once
    parsed, by the full parser)."""
    from directory.cli import build_parser
    from directory.cli.crl import plain_build, read_ahead

    monkeypatch.delenv("ANNUAIRE_CONFIG", raising=False)
    data = (demo.parent / "data" / "registry.sqlite3").resolve()
    for words, issuer in ((["--config", str(demo), "crl", "build"], ISSUER),
                          (["crl", "build", "--config", str(demo), "--issuer", "ac-structures", "--json"],
                           "ac-structures"),
                          (["crl", "build", f"--config={demo}", "--issuer=ac-structures"], "ac-structures"),
                          (["-c", "elsewhere.toml", "crl", "build", "-c", str(demo)], ISSUER)):
        plain = plain_build(words)
        assert plain is not None, words
        assert vars(build_parser(crl_only=True).parse_args(words)) == vars(build_parser().parse_args(words))
        ahead = read_ahead(plain)
        assert ahead is not None, words
        try:
            assert (ahead.path.resolve(), ahead.issuer) == (data, issuer)
        finally:
            ahead.close()
    for words in (["crl", "build", "--config", str(demo), "--delta"], ["crl", "show", "--config", str(demo), "x.crl"],
                  ["crl", "build", "--conf", str(demo)], ["crl", "--config", str(demo), "build"],
                  [f"-c{demo}", "crl", "build"], ["--help"], ["crl", "build", "--config"], ["crl", "build", "--help"],
                  ["--log-level", "nonsense", "crl", "build", "--config", str(demo)],
                  ["crl", "build", "--json=1", "--config", str(demo)], ["--config", "--json", "crl", "build"],
                  ["crl", "build", "--config", str(demo), "--issuer", "-x"],
                  ["crl", "build", "extra", "--config", str(demo)], ["crl"], []):
        assert plain_build(words) is None, words
    monkeypatch.setenv("ANNUAIRE_CONFIG", str(demo))
    plain = plain_build(["crl", "build"])
    assert plain is not None
    ahead = read_ahead(plain)
    assert ahead is not None and ahead.path.resolve() == data
    ahead.close()


def test_a_log_level_from_the_environment_is_refused_as_the_full_parser_refuses_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """$ANNUAIRE_LOG_LEVEL is a value the parser checks (the default of --log-level): plain `crl build` words
    with a level it refuses get the full parser's error, every command in its usage, not the crl group's alone."""
    from directory.cli import build_parser, main

    monkeypatch.setenv("ANNUAIRE_LOG_LEVEL", "loud")
    words = ["crl", "build", "--config", "nowhere.toml"]
    with pytest.raises(SystemExit) as full:
        build_parser().parse_args(words)
    expected = capsys.readouterr().err
    assert "{init-demo," in expected
    with pytest.raises(SystemExit) as ran:
        main(words)
    assert (ran.value.code, capsys.readouterr().err) == (full.value.code, expected) == (2, expected)


def test_main_hands_the_read_it_began_to_the_build(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One read, begun before the parsers are made (the crl group's alone), used by the build."""
    import directory.cli
    from directory.cli import main

    seen: list[str] = []
    aheads: list[ReadAhead | None] = []
    real_start, real_parser, real_number_in = readahead.start, directory.cli.build_parser, readahead.number_in

    def start(*args: object) -> ReadAhead | None:
        seen.append("read")
        aheads.append(real_start(*args))  # type: ignore[arg-type]
        return aheads[-1]

    def number_in(ahead: ReadAhead, *args: object, **kwargs: object) -> object:
        numbered = real_number_in(ahead, *args, **kwargs)  # type: ignore[arg-type]
        seen.append("numbered in the read" if ahead is aheads[0] and numbered is not None else "not numbered")
        return numbered

    monkeypatch.setattr(readahead, "start", start)
    monkeypatch.setattr(readahead, "number_in", number_in)
    monkeypatch.setattr(directory.cli, "build_parser", lambda crl_only: seen.append(f"parsers {crl_only}")
                        or real_parser(crl_only))
    assert main(["crl", "build", "--config", str(demo), "--issuer", ISSUER]) == 0
    assert seen == ["read", "parsers True", "numbered in the read"]
    assert aheads[0] is not None and aheads[0]._conn is None


def test_crl_build_uses_its_read_ahead_and_lists_the_same_entries(demo: Path, parts) -> None:
    """`crl build` builds its first CRL from the entries read ahead (the debug timing says so); the entries
    are byte for byte those of a build that reads after allocating its number."""
    result = run_cli("--log-level", "DEBUG", "crl", "build", "--config", str(demo), "--issuer", ISSUER)
    assert result.returncode == 0, result.stderr
    assert "reading ahead" in result.stderr, result.stderr
    crl_file = demo.parent / "data" / "crl" / f"{ISSUER}.crl"
    ahead_entries = acrl.CertificateList.load(crl_file.read_bytes())["tbs_cert_list"]["revoked_certificates"].dump()
    _, _, publisher = parts
    publisher.publish(publisher.full_targets()[0])  # no read ahead
    usual = acrl.CertificateList.load(crl_file.read_bytes())["tbs_cert_list"]["revoked_certificates"].dump()
    assert ahead_entries == usual and len(ahead_entries) > 100


def test_a_revocation_before_the_number_is_listed_one_after_is_not(parts, caplog: pytest.LogCaptureFixture) -> None:
    """A revocation committed after the read began but before the number is allocated makes SQLite refuse
    the allocation in the read's snapshot: the build reads again and lists it. One committed after the
    number was allocated (while signing) is not listed by that CRL (its change sequence is before it)."""
    demo, registry, publisher = parts
    first, second = _good_serials(demo)[:2]
    caplog.set_level(logging.DEBUG, logger="directory.crl")

    ahead = ReadAhead(registry.path, ISSUER, False)
    ahead.reader.join()  # everything read, in a snapshot taken before the revocation
    registry.revoke(ISSUER, first, "superseded")
    publisher.read_ahead = ahead
    crl = publisher.publish(publisher.full_targets()[0])
    assert int(first, 16) in _listed(crl.path)
    assert "read again" in caplog.text and "reading ahead" not in caplog.text

    caplog.clear()
    publisher.read_ahead = ReadAhead(registry.path, ISSUER, False)
    publisher.on_stage = lambda text: registry.revoke(ISSUER, second, "superseded") if "signing" in text else None
    crl = publisher.publish(publisher.full_targets()[0])
    publisher.on_stage = None
    assert "reading ahead" in caplog.text and "read again" not in caplog.text
    assert int(second, 16) not in _listed(crl.path) and int(first, 16) in _listed(crl.path)
    assert [c[2] for c in registry.changes_after(crl.record.change_seq)] == [second]  # for the next CRL
    crl = publisher.publish(publisher.full_targets()[0])
    assert int(second, 16) in _listed(crl.path)


def test_a_read_ahead_that_fails_fails_the_build_and_writes_nothing(parts, monkeypatch: pytest.MonkeyPatch) -> None:
    demo, registry, publisher = parts
    crl_dir = demo.parent / "data" / "crl"
    publisher.publish(publisher.full_targets()[0])
    before = (crl_dir / f"{ISSUER}.crl").read_bytes()
    files = sorted(p.name for p in crl_dir.iterdir())
    number = registry.crl_last_number(ISSUER)
    real = CrlSnapshot.full_entry_runs

    def failing(self: CrlSnapshot, *args: object) -> Iterator[tuple[int, bytes]]:
        yield next(iter(real(self, *args)))  # type: ignore[arg-type]
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(CrlSnapshot, "full_entry_runs", failing)
    publisher.read_ahead = ReadAhead(registry.path, ISSUER, False)
    with pytest.raises(CrlBuildError, match="reading the entries: disk I/O error"):
        publisher.publish(publisher.full_targets()[0])
    assert (crl_dir / f"{ISSUER}.crl").read_bytes() == before
    assert sorted(p.name for p in crl_dir.iterdir()) == files
    assert registry.crl_last_number(ISSUER) == number  # no number allocated, none burnt
    assert publisher.stats.failed == 1


def test_a_read_ahead_that_does_not_fit_is_dropped(parts, caplog: pytest.LogCaptureFixture) -> None:
    """Read for another cut-off (keep_expired) or another issuer: not used, the build reads as usual."""
    _, registry, publisher = parts
    caplog.set_level(logging.DEBUG, logger="directory.crl")
    for ahead in (ReadAhead(registry.path, ISSUER, True), ReadAhead(registry.path, "ac-structures", False)):
        publisher.read_ahead = ahead
        crl = publisher.publish(publisher.full_targets()[0])
        assert crl.entries == len(_listed(crl.path))
    assert "reading ahead" not in caplog.text


def test_crl_build_in_process_leaves_the_interpreter_as_found(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`crl build` runs without the cyclic collector (a short command, its memory the CRL's bytes) and with a
    short GIL switch interval (its reading thread not paced by the imports), and gives both back: a caller in
    the same process (tests, a wrapper) keeps collecting and switching as before."""
    import gc

    from directory.cli import main

    assert gc.isenabled()
    interval = sys.getswitchinterval()
    seen = []
    real = CrlPublisher.publish_all
    monkeypatch.setattr(CrlPublisher, "publish_all",
                        lambda self, *a: seen.append((gc.isenabled(), sys.getswitchinterval())) or real(self, *a))
    assert main(["crl", "build", "--config", str(demo), "--issuer", ISSUER]) == 0
    assert seen == [(False, pytest.approx(0.0005))]
    assert gc.isenabled() and sys.getswitchinterval() == interval


def test_a_registry_file_replaced_after_the_read_began_is_not_numbered_in(parts, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A backup moved into place while a build reads ahead: the read was of the old file, a number allocated
    there would be lost to the file in place (whose next build would take it again). The read ahead knows the
    file it read (device, inode) and the build reads again from the registry instead."""
    _, registry, publisher = parts
    copy = tmp_path / "registry.sqlite3"
    with sqlite3.connect(registry.path) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    with sqlite3.connect(copy) as db:
        db.execute("PRAGMA journal_mode=WAL")
    ahead = ReadAhead(copy, ISSUER, False)
    list(ahead.reader.runs())  # read to the end, in the copy's snapshot
    assert ahead.same_file(copy)
    replacement = tmp_path / "replacement.sqlite3"
    with sqlite3.connect(copy) as source, sqlite3.connect(replacement) as target:
        source.backup(target)
    os.replace(replacement, copy)
    assert not ahead.same_file(copy)  # same path, another file
    ahead.close()
    # the build's side: a read ahead whose file is not the registry's now is not numbered in
    caplog.set_level(logging.DEBUG, logger="directory.crl")
    number = registry.crl_last_number(ISSUER)
    publisher.read_ahead = ReadAhead(registry.path, ISSUER, False)
    monkeypatch.setattr(ReadAhead, "same_file", lambda self, path: False)
    crl = publisher.publish(publisher.full_targets()[0])
    assert "registry file was replaced" in caplog.text
    assert crl.record.number == registry.crl_last_number(ISSUER) > number
    assert crl.entries == len(_listed(crl.path))
