"""The hand-written CRL DER is byte-identical to asn1crypto's encoding of the same values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from asn1crypto import crl as acrl
from asn1crypto import x509 as ax509

from directory.crl import der


def _ts(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


def _asn1_entry(serial: int, at: int, reason: str | None, invalidity: int | None) -> bytes:
    exts = []
    if reason:
        exts.append({"extn_id": "crl_reason", "critical": False, "extn_value": reason})
    if invalidity is not None:
        exts.append({"extn_id": "invalidity_date", "critical": False,
                     "extn_value": datetime.fromtimestamp(invalidity, UTC)})
    t = datetime.fromtimestamp(at, UTC)
    value = {"user_certificate": serial,
             "revocation_date": ax509.Time({"utc_time" if t.year < 2050 else "general_time": t})}
    if exts:
        value["crl_entry_extensions"] = exts
    return acrl.RevokedCertificate(value).dump(force=True)


@pytest.mark.parametrize("serial", [1, 127, 128, 255, 256, 0x7F_FFFF, 2**127 + 5, 2**159 - 1])
@pytest.mark.parametrize("reason,code", [(None, None), ("key_compromise", 1), ("certificate_hold", 6),
                                         ("remove_from_crl", 8), ("aa_compromise", 10)])
def test_entries_match_asn1crypto(serial: int, reason: str | None, code: int | None) -> None:
    at = _ts(2026, 11, 28, 12, 30, 5)
    assert der.revoked_entry(serial, at, code) == _asn1_entry(serial, at, reason, None)
    inval = _ts(2026, 11, 1)
    assert der.revoked_entry(serial, at, code, inval) == _asn1_entry(serial, at, reason, inval)


def test_unspecified_reason_is_omitted() -> None:
    at = _ts(2030, 1, 1)
    assert der.revoked_entry(5, at, 0) == _asn1_entry(5, at, None, None)


def test_utctime_until_2049_generalizedtime_from_2050() -> None:
    assert der.time(_ts(2049, 12, 31, 23, 59, 59)) == b"\x17\x0d491231235959Z"
    assert der.time(_ts(2050, 1, 1)) == b"\x18\x0f20500101000000Z"
    at = _ts(2051, 6, 1, 8, 0, 0)
    assert der.revoked_entry(9, at, 1) == _asn1_entry(9, at, "key_compromise", None)


def test_extensions_match_asn1crypto() -> None:
    def ext(name: str, value: object, critical: bool = False) -> bytes:
        return ax509.Extension({"extn_id": name, "critical": critical, "extn_value": value}).dump()

    assert der.crl_number(2**70) == acrl.TBSCertListExtension(
        {"extn_id": "crl_number", "critical": False, "extn_value": 2**70}).dump()
    assert der.delta_crl_indicator(41) == acrl.TBSCertListExtension(
        {"extn_id": "delta_crl_indicator", "critical": True, "extn_value": 41}).dump()
    assert der.authority_key_identifier(b"\x01" * 20) == ext("authority_key_identifier",
                                                            {"key_identifier": b"\x01" * 20})
    url = "http://127.0.0.1:8080/crl/ac-personnes-p1.crl"
    names = [ax509.GeneralName(name="uniform_resource_identifier", value=url)]
    assert der.issuing_distribution_point(url) == acrl.TBSCertListExtension(
        {"extn_id": "issuing_distribution_point", "critical": True, "extn_value": {
            "distribution_point": {"full_name": names}}}).dump()
    assert der.freshest_crl(url) == acrl.TBSCertListExtension(
        {"extn_id": "freshest_crl", "critical": False, "extn_value": [
            {"distribution_point": {"full_name": names}}]}).dump()


def test_length_forms() -> None:
    assert der.length(127) == b"\x7f"
    assert der.length(128) == b"\x81\x80"
    assert der.length(70_000_000) == b"\x84" + (70_000_000).to_bytes(4, "big")
