"""RFC 5280 revocation rules, applied by the registry in one transaction each (on SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from directory.certinfo import CertificateInfo
from directory.registry import Registry, UnknownCertificate
from directory.registry.audit import audit_hash
from directory.revocation import RevocationRefused, RevocationState, parse_reason
from tests.conftest import Clock

NOW = 1_900_000_000


def _info(serial: int, not_before: int = NOW - 86400 * 30, not_after: int = NOW + 86400 * 365) -> CertificateInfo:
    return CertificateInfo(serial, format(serial, "x"), f"CN=user {serial}", ("u@x.fr",), (), None,
                           not_before, not_after, b"\x30\x03" + serial.to_bytes(1, "big"), f"{serial:064x}",
                           "authentication")


@pytest.fixture()
def registry(registry_location: str) -> Iterator[Registry]:
    reg = Registry(registry_location, clock=Clock(NOW))
    reg.ensure_issuer("ca", b"subject", b"cert")
    reg.import_certificates("ca", [_info(n) for n in range(1, 10)])
    yield reg
    reg.close()


def test_revoke_then_repeat_is_a_noop(registry: Registry) -> None:
    first = registry.revoke("ca", "1", "superseded")
    assert first.changed and first.record.status == "revoked" and first.record.reason == "superseded"
    again = registry.revoke("ca", "1", "superseded")
    assert not again.changed and "already revoked" in again.message


def test_reason_may_only_change_to_key_compromise(registry: Registry) -> None:
    registry.revoke("ca", "2", "superseded", at=NOW - 100)
    with pytest.raises(RevocationRefused, match="may only change to keyCompromise"):
        registry.revoke("ca", "2", "affiliationChanged")
    changed = registry.revoke("ca", "2", "keyCompromise", invalidity_date=NOW - 500)
    assert changed.changed and changed.record.reason == "keyCompromise"
    assert changed.record.revocation_time == NOW - 100  # the original time is kept
    assert registry.get("ca", "2").reason == "keyCompromise"  # type: ignore[union-attr]


def test_hold_release_and_release_again(registry: Registry) -> None:
    held = registry.revoke("ca", "3", "certificateHold")
    assert held.record.status == "on-hold"
    assert not registry.revoke("ca", "3", "certificateHold").changed
    released = registry.release_hold("ca", "3")
    assert released.changed and released.record.status == "good" and released.record.reason is None
    again = registry.release_hold("ca", "3")
    assert not again.changed and "not on hold" in again.message


def test_hold_made_permanent_keeps_the_hold_time(registry: Registry) -> None:
    registry.revoke("ca", "4", "certificateHold", at=NOW - 1000)
    permanent = registry.revoke("ca", "4", "keyCompromise")
    assert permanent.record.status == "revoked" and permanent.record.revocation_time == NOW - 1000
    with pytest.raises(RevocationRefused, match="revocation is final"):
        registry.release_hold("ca", "4")


def test_revoked_cannot_be_released(registry: Registry) -> None:
    registry.revoke("ca", "5", "keyCompromise")
    with pytest.raises(RevocationRefused, match="only certificateHold can be released"):
        registry.release_hold("ca", "5")


def test_times_are_checked(registry: Registry) -> None:
    with pytest.raises(RevocationRefused, match="in the future"):
        registry.revoke("ca", "6", "superseded", at=NOW + 3600)
    with pytest.raises(RevocationRefused, match="before the certificate's notBefore"):
        registry.revoke("ca", "6", "superseded", at=NOW - 86400 * 60)
    with pytest.raises(RevocationRefused, match="invalidity date is after"):
        registry.revoke("ca", "6", "keyCompromise", at=NOW - 10, invalidity_date=NOW - 5)
    assert registry.get("ca", "6").status == "good"  # type: ignore[union-attr]


def test_revoking_an_expired_certificate_is_allowed(registry_location: str) -> None:
    reg = Registry(registry_location, clock=Clock(NOW))
    reg.ensure_issuer("ca", b"s", b"c")
    reg.import_certificates("ca", [_info(42, NOW - 86400 * 800, NOW - 86400 * 10)])
    assert reg.revoke("ca", "2a", "cessationOfOperation").record.status == "revoked"
    reg.close()


def test_unknown_serial_refused_unless_forced(registry: Registry) -> None:
    with pytest.raises(UnknownCertificate, match=r"no certificate with serial 0xff$"):
        registry.revoke("ca", "ff", "keyCompromise")
    assert registry.get("ca", "ff") is None
    forced = registry.revoke("ca", "ff", "keyCompromise", force=True)
    assert forced.changed and forced.record.forced and "forced" in forced.message
    audit = [a for a in registry.audit_records() if a["serial_hex"] == "ff"]
    assert [a["action"] for a in audit] == ["revoke-forced"]
    # the certificate arriving later completes the row and keeps the revocation
    outcome = registry.import_certificates("ca", [_info(0xFF)])[0]
    assert outcome.result == "completed"
    assert registry.get("ca", "ff").status == "revoked"  # type: ignore[union-attr]


def test_reason_parsing() -> None:
    assert parse_reason("keycompromise") == "keyCompromise"
    assert parse_reason("1") == "keyCompromise"
    assert parse_reason("CACompromise") == "cACompromise"
    with pytest.raises(RevocationRefused, match="unknown reason"):
        parse_reason("removeFromCRL")


def test_audit_records_before_after_and_chain(registry: Registry) -> None:
    registry.revoke("ca", "7", "superseded", actor="alice")
    records = registry.audit_records()
    last = records[-1]
    assert last["actor"] == "alice" and last["action"] == "revoke"
    assert '"status": "good"' in last["before"] and '"status": "revoked"' in last["after"]
    prev = "0" * 64
    for r in records:
        assert r["prev_hash"] == prev
        assert r["hash"] == audit_hash(prev, r["at"], r["actor"], r["action"], r["issuer"], r["serial_hex"],
                                       r["before"], r["after"])
        prev = r["hash"]


def test_failed_operation_changes_nothing(registry: Registry, registry_location: str) -> None:
    before = len(Registry(registry_location).audit_records())
    with pytest.raises(RevocationRefused):
        registry.revoke("ca", "8", "superseded", at=NOW + 99999)
    assert len(Registry(registry_location).audit_records()) == before
    assert registry.get("ca", "8").status == "good"  # type: ignore[union-attr]


def test_migrations_are_versioned_and_idempotent(registry_location: str) -> None:
    Registry(registry_location).close()
    reg = Registry(registry_location)
    from directory.registry.schema import MIGRATIONS

    assert reg.schema_version() == max(v for v, _, _ in MIGRATIONS)
    if reg.path is not None:
        mode = sqlite3.connect(reg.path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    reg.close()


def test_invalidity_date_rules(registry: Registry) -> None:
    """Invalidity dates: never on a hold, never after the revocation time in force, not more than a year before
    notBefore (NOW - 30 days here), always encodable; each refusal changes nothing."""
    year = 366 * 86400
    refusals = [
        ("1", dict(reason="certificateHold", invalidity_date=NOW - 10), "certificateHold has no invalidity"),
        ("1", dict(reason="keyCompromise", at=NOW - 100, invalidity_date=NOW - 50), "after the revocation time"),
        ("1", dict(reason="keyCompromise", invalidity_date=NOW - 86400 * 30 - year - 1), "before the certificate"),
        ("1", dict(reason="keyCompromise", invalidity_date=-62135596800), "outside 1950"),  # 0001-01-01
        ("1", dict(reason="keyCompromise", at=-631152001), "outside 1950"),
    ]
    for serial, kwargs, why in refusals:
        with pytest.raises(RevocationRefused, match=why):
            registry.revoke("ca", serial, **kwargs)  # type: ignore[arg-type]
        assert registry.get("ca", serial).status == "good"  # type: ignore[union-attr]
    ok = registry.revoke("ca", "1", "keyCompromise", invalidity_date=NOW - 86400 * 30 - year)
    assert ok.changed and ok.record.invalidity_date == NOW - 86400 * 30 - year
    # a hold made permanent keeps the hold's time: the invalidity date may not come after it
    registry.revoke("ca", "9", "certificateHold", at=NOW - 1000)
    with pytest.raises(RevocationRefused, match="after the revocation time"):
        registry.revoke("ca", "9", "keyCompromise", invalidity_date=NOW - 500)
    made = registry.revoke("ca", "9", "keyCompromise", invalidity_date=NOW - 2000)
    assert made.record.revocation_time == NOW - 1000 and made.record.invalidity_date == NOW - 2000
    # a forced revocation (no certificate, no notBefore) is still bounded by what a CRL can encode
    with pytest.raises(RevocationRefused, match="outside 1950"):
        registry.revoke("ca", "abc", "keyCompromise", invalidity_date=-62135596800, force=True)
    assert registry.get("ca", "abc") is None


def test_file_state_order_keeps_the_newer_change() -> None:
    """A file's state against the registry's: the newer one is said; a file's good state has no time."""
    from directory.revocation import file_state_order

    good, held = RevocationState("good"), RevocationState("on-hold", "certificateHold", 1000)
    revoked = RevocationState("revoked", "keyCompromise", 2000)
    assert file_state_order(held, None, RevocationState("on-hold", "certificateHold", 900)) == "same"
    assert file_state_order(good, None, held) == "file-newer"  # never changed here: the file's revocation
    assert file_state_order(good, 1500, held) == "registry-newer"  # the hold was released after it
    assert file_state_order(good, 500, held) == "file-newer"  # a new hold, after the release
    assert file_state_order(held, 1000, good) == "registry-newer"  # a valid line knows of no revocation
    assert file_state_order(revoked, 2000, good) == "registry-newer"
    assert file_state_order(held, 1000, RevocationState("revoked", "superseded", 1200)) == "file-newer"
    assert file_state_order(revoked, 2000, RevocationState("revoked", "superseded", 1800)) == "registry-newer"
    assert file_state_order(revoked, 2000, RevocationState("revoked", "superseded", 2000)) == "registry-newer"
