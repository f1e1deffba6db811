"""Issue 13 §6: no operator input makes a CRL unparseable. Invalidity dates are RFC 3339, bounded and
encoded as four-digit GeneralizedTime; and whatever reaches the registry anyway, the self-check parses
every entry's extensions before anything is published."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from directory import der
from directory.crl import entrycheck
from tests.conftest import run_cli


def _good(demo: Path, n: int = 0) -> dict:
    manifest = json.loads((demo.parent / "certs" / "manifest.json").read_text())
    return [m for m in manifest if m["issuer"] == "ac-personnes" and m.get("status", "good") == "good"][n]


def test_invalidity_dates_are_checked_and_encoded_as_rfc5280_wants(demo: Path) -> None:
    target = _good(demo)
    base = ["revoke", "-c", str(demo), "--issuer", "ac-personnes", "--serial", target["serial_hex"]]
    # not RFC 3339, or not encodable: refused by the parser (usage error), nothing written
    for bad in ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00+00:01", "2020W011T000000Z", "20260101T000000Z",
                "2026-001T00:00:00Z", "2026-11-28T10:00:00Z\n", "２０２６-11-28T10:00:00Z"):
        r = run_cli(*base, "--reason", "keyCompromise", "--invalidity-date", bad)
        assert r.returncode == 2 and ("RFC 3339" in r.stderr or "1950" in r.stderr), (bad, r.stderr)
    # RFC 3339 but against the rules: refused by revocation.py, nothing written
    not_before = json.loads(run_cli("show", "-c", str(demo), "--issuer", "ac-personnes", "--serial",
                                    target["serial_hex"], "--json", check=True).stdout)["not_before"]
    too_early = datetime.fromisoformat(not_before.replace("Z", "+00:00")).replace(tzinfo=UTC)
    too_early = too_early.replace(year=too_early.year - 2).strftime("%Y-%m-%dT%H:%M:%SZ")
    now = datetime.now(UTC).replace(microsecond=0)
    at, later = (now - timedelta(seconds=60)).isoformat(), now.isoformat()
    for extra, why in ((["--reason", "certificateHold", "--invalidity-date", at], "Hold"),
                       (["--reason", "keyCompromise", "--at", at, "--invalidity-date", later],
                        "after the revocation time"),
                       (["--reason", "keyCompromise", "--invalidity-date", too_early], "before the certificate")):
        r = run_cli(*base, *extra)
        assert r.returncode == 1 and why in r.stderr, (extra, r.stderr)
    shown = json.loads(run_cli("show", "-c", str(demo), "--issuer", "ac-personnes", "--serial",
                               target["serial_hex"], "--json", check=True).stdout)
    assert shown["status"] == "good"
    # a valid one with an offset: stored in UTC, published as GeneralizedTime, read by cryptography and openssl
    run_cli(*base, "--reason", "keyCompromise", "--invalidity-date", "2026-03-01T12:30:00+02:00", check=True)
    run_cli("crl", "build", "-c", str(demo), "--issuer", "ac-personnes", check=True)
    crl_file = demo.parent / "data" / "crl" / "ac-personnes.crl"
    crl = x509.load_der_x509_crl(crl_file.read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(int(target["serial_hex"], 16))
    assert entry is not None
    value = entry.extensions.get_extension_for_class(x509.InvalidityDate).value
    assert value.invalidity_date_utc == datetime(2026, 3, 1, 10, 30, tzinfo=UTC)
    assert b"\x18\x0f20260301103000Z" in crl_file.read_bytes()
    text = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(crl_file), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "Invalidity Date" in text and "Mar  1 10:30:00 2026 GMT" in text and "Bad time" not in text


def test_the_self_check_refuses_an_entry_a_relying_party_could_not_parse(demo: Path) -> None:
    """An entry as the old code wrote it for invalidity_date 0001-01-01T00:00:00Z (year '1', 12 digits),
    and one with an unknown critical extension, put in the registry behind the rules' back: the build
    fails naming the serial, the previous CRL stays published."""
    run_cli("crl", "build", "-c", str(demo), "--issuer", "ac-personnes", check=True)
    crl_file = demo.parent / "data" / "crl" / "ac-personnes.crl"
    before = crl_file.read_bytes()
    db = sqlite3.connect(demo.parent / "data" / "registry.sqlite3")
    (cid, serial_hex, revoked_at), = db.execute(
        "SELECT c.id, c.serial_hex, c.revocation_time FROM certificates c JOIN issuers i ON i.id = c.issuer_id "
        "WHERE i.name = 'ac-personnes' AND c.status = 'revoked' ORDER BY c.id LIMIT 1")
    serial = int(serial_hex, 16)
    year_one = der.sequence(der.integer(serial), der.time(revoked_at), der.sequence(
        der.extension(der.OID_INVALIDITY_DATE, der.tlv(0x18, b"10101000000Z"))))
    unknown_critical = der.sequence(der.integer(serial), der.time(revoked_at), der.sequence(
        der.extension(bytes.fromhex("06032a0304"), der.tlv(0x05, b""), critical=True)))
    for entry, why in ((year_one, "ParseError"), (unknown_critical, "1.2.3.4 is not one this service writes")):
        with db:
            db.execute("UPDATE crl_entries SET entry_der = ? WHERE certificate_id = ?", (entry, cid))
        result = run_cli("crl", "build", "-c", str(demo), "--issuer", "ac-personnes")
        assert result.returncode == 1, result.stdout
        assert f"entry for serial 0x{serial_hex}" in result.stderr and why in result.stderr, result.stderr
        assert crl_file.read_bytes() == before
    db.close()


def test_entry_walk_counts_every_entry_and_parses_each_distinct_list_once() -> None:
    at = int(datetime(2026, 9, 1, tzinfo=UTC).timestamp())
    entries = [der.revoked_entry(n, at, n % 3, at - n if n % 4 == 0 else None) for n in range(1, 2001)]
    entries.append(der.sequence(der.integer(2**159 + 7), der.time(at)))  # 21-octet serial, no extensions
    algorithm = bytes.fromhex("300d06092a864886f70d01010b0500")
    tbs = der.sequence(b"\x02\x01\x01", algorithm, der.sequence(), der.time(at), der.time(at + 86400),
                       der.sequence(*entries))
    crl = der.sequence(tbs, algorithm, der.tlv(0x03, b"\x00"))
    count, distinct = entrycheck.distinct_extensions(crl)
    assert count == 2001 == len(x509.load_der_x509_crl(crl))
    assert len(distinct) == 2 + 500  # two reason codes alone (0 is omitted), 500 with an invalidity date
    assert entrycheck.check_entry_extensions(crl) == 2001
    empty = der.sequence(der.sequence(b"\x02\x01\x01", algorithm, der.sequence(), der.time(at)), algorithm,
                         der.tlv(0x03, b"\x00"))
    assert entrycheck.check_entry_extensions(empty) == 0


def test_a_rebuild_walks_only_the_segments_that_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    at = int(datetime(2026, 9, 1, tzinfo=UTC).timestamp())
    algorithm = bytes.fromhex("300d06092a864886f70d01010b0500")

    def crl_of(segments: list[bytes]) -> bytes:
        tbs = der.sequence(b"\x02\x01\x01", algorithm, der.sequence(), der.time(at), der.time(at + 86400),
                           der.sequence(*segments))
        return der.sequence(tbs, algorithm, der.tlv(0x03, b"\x00"))

    segments = [b"".join(der.revoked_entry(s * 1000 + n, at, 1 + n % 2) for n in range(100)) for s in range(3)]
    walked: list[int] = []
    real = entrycheck._walk
    monkeypatch.setattr(entrycheck, "_walk", lambda crl, i, end, t: walked.append(end - i) or real(crl, i, end, t))
    cache = entrycheck.WalkCache()
    lengths = [len(s) for s in segments]
    assert entrycheck.check_entry_extensions(crl_of(segments), lengths, cache) == 300
    assert walked == lengths
    walked.clear()
    assert entrycheck.check_entry_extensions(crl_of(segments), lengths, cache) == 300
    assert walked == []  # nothing changed: nothing walked again
    bad = der.sequence(der.integer(77), der.time(at), der.sequence(
        der.extension(der.OID_INVALIDITY_DATE, der.tlv(0x18, b"10101000000Z"))))
    segments[1] += bad
    lengths = [len(s) for s in segments]
    for _ in range(2):  # refused when walked, and again when its segment comes from the cache
        with pytest.raises(entrycheck.EntryProblem, match="entry for serial 0x4d"):
            entrycheck.check_entry_extensions(crl_of(segments), lengths, cache)
        assert walked == [lengths[1]]
    # lengths that do not add up to the list: walked whole, as without a cache
    walked.clear()
    good = crl_of(segments[:1])
    assert entrycheck.check_entry_extensions(good, [1, 2], entrycheck.WalkCache()) == 100
    assert walked == [lengths[0]]


def _crl_of(segments: list[bytes], at: int) -> bytes:
    algorithm = bytes.fromhex("300d06092a864886f70d01010b0500")
    tbs = der.sequence(b"\x02\x01\x01", algorithm, der.sequence(), der.time(at), der.time(at + 86400),
                       der.sequence(*segments))
    return der.sequence(tbs, algorithm, der.tlv(0x03, b"\x00"))


def test_entries_the_walk_accepts_but_a_parser_refuses_are_refused_even_from_the_cache(tmp_path: Path) -> None:
    """The walk only frames entries; cryptography parses each run (a non-minimal serial here), and the walk
    file of an earlier build is only trusted for runs with the very same bytes."""
    at = int(datetime(2026, 9, 1, tzinfo=UTC).timestamp())
    segments = [b"".join(der.revoked_entry(s * 1000 + n, at, 1) for n in range(50)) for s in range(2)]
    cache = entrycheck.WalkCache()
    lengths = [len(s) for s in segments]
    assert entrycheck.check_entry_extensions(_crl_of(segments, at), lengths, cache) == 100
    cache.save(tmp_path / ".x.crl.walk")
    bad = der.tlv(0x30, b"\x02\x02\x00\x05" + der.time(at))  # INTEGER 5 with a needless leading zero
    segments[1] = bad + segments[1]
    lengths = [len(s) for s in segments]
    for _ in range(2):  # a fresh cache from the file (another process): the changed run is parsed again
        reloaded = entrycheck.WalkCache()
        reloaded.load(tmp_path / ".x.crl.walk")
        assert len(reloaded.results) == 2
        with pytest.raises(entrycheck.EntryProblem, match="entries do not parse"):
            entrycheck.check_entry_extensions(_crl_of(segments, at), lengths, reloaded)
    # whatever is in the walk file, a damaged or foreign one is ignored
    for junk in ("", "{", '{"version": 1, "segments": []}', '{"version": 2, "segments": [["zz", 1, []]]}',
                 '{"version": 2, "segments": [["00", 1, []]]}', "[]"):
        (tmp_path / ".x.crl.walk").write_text(junk)
        fresh = entrycheck.WalkCache()
        fresh.load(tmp_path / ".x.crl.walk")
        assert fresh.results == {}


def test_the_outer_structure_must_be_der_and_the_skeleton_keeps_everything_but_the_entries() -> None:
    at = int(datetime(2026, 9, 1, tzinfo=UTC).timestamp())
    crl = _crl_of([der.revoked_entry(7, at, 1)], at)
    shape = entrycheck.layout(crl)
    skeleton = x509.load_der_x509_crl(shape.skeleton(crl))
    full = x509.load_der_x509_crl(crl)
    assert len(skeleton) == 0 and len(full) == 1
    assert skeleton.last_update_utc == full.last_update_utc and skeleton.next_update_utc == full.next_update_utc
    assert crl[shape.entries:shape.entries_end] == der.revoked_entry(7, at, 1)
    with pytest.raises(entrycheck.EntryProblem, match="does not end where the file does"):
        entrycheck.layout(crl + b"\x00")
    with pytest.raises(entrycheck.EntryProblem, match="CertificateList is not a DER SEQUENCE"):
        entrycheck.layout(b"\x30\x81" + bytes((len(crl) - 2,)) + crl[2:])  # a needless long-form length
    with pytest.raises(entrycheck.EntryProblem, match="truncated"):
        entrycheck.layout(crl[:1])


def test_a_build_in_a_new_process_walks_only_the_runs_that_changed(demo: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk file beside the CRL: a fresh publisher (another process: `crl build`, a restarted service)
    re-walks nothing unchanged, one run after a revocation, everything when the file is damaged."""
    from directory.config.load import load_config
    from directory.crl.builder import opened, publishers_for
    from directory.runtime import open_config_registry, open_hsm

    config = load_config(demo)
    registry = open_config_registry(config)
    hsm = open_hsm(config)
    walked: list[int] = []
    real = entrycheck._walk
    monkeypatch.setattr(entrycheck, "_walk", lambda crl, i, end, t: walked.append(end - i) or real(crl, i, end, t))

    def build() -> int:
        walked.clear()
        publisher = publishers_for(config, opened(hsm), registry)["ac-personnes"]  # nothing in memory
        crl = publisher.publish(publisher.full_targets()[0])
        assert crl.entries == len(x509.load_der_x509_crl(crl.path.read_bytes()))
        return crl.entries

    try:
        entries = build()
        assert entries > 0 and len(walked) == 1
        walk_file = config.data_dir / "crl" / ".ac-personnes.crl.walk"
        assert walk_file.exists()
        assert build() == entries and walked == []  # the same bytes: taken from the file
        registry.revoke("ac-personnes", _good(demo)["serial_hex"], "keyCompromise")
        assert build() == entries + 1 and len(walked) == 1
        walk_file.write_text("{")
        assert build() == entries + 1 and len(walked) == 1  # a damaged file: walked again, published all the same
    finally:
        hsm.close()
        registry.close()
