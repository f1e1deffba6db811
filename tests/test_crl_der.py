"""The hand-written DER (CRL pieces, lengths, digest identifiers) is byte-identical to asn1crypto's
encoding of the same values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from asn1crypto import algos, core
from asn1crypto import crl as acrl
from asn1crypto import x509 as ax509
from cryptography import x509

from directory import der


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
    for n in (0, 1, 127, 128, 255, 256, 65535, 65536, 2**24 - 1, 2**24):  # every form's edges
        assert der.tlv(0x04, b"\x00" * n) == core.OctetString(b"\x00" * n).dump(), n


@pytest.mark.parametrize("name", ["sha1", "sha256", "sha384", "sha512"])
def test_digest_oids_match_asn1crypto(name: str) -> None:
    """The one digest table gives the CertID algorithm and the RSA DigestInfo (RFC 8017 §9.2) exactly."""
    algorithm = algos.DigestAlgorithm({"algorithm": name, "parameters": core.Null()})
    assert der.digest_algorithm(name) == algorithm.dump()
    digest = bytes(range(der.DIGESTS[name].size))
    info = algos.DigestInfo({"digest_algorithm": algorithm, "digest": digest}).dump()
    assert der.digest_info_prefix(name) + digest == info


class _Extension(core.Sequence):
    """RFC 5280 Extension, for an OID asn1crypto has no name for (expiredCertsOnCRL)."""

    _fields = [  # noqa: RUF012 (asn1crypto's declaration style)
        ("extn_id", core.ObjectIdentifier), ("critical", core.Boolean, {"default": False}),
        ("extn_value", core.OctetString)]


@pytest.mark.parametrize("since", [_ts(2020, 1, 1), _ts(2049, 12, 31, 23, 59, 59), _ts(2050, 1, 1),
                                   _ts(1970, 1, 1, 0, 0, 1)])
def test_expired_certs_on_crl_matches_asn1crypto(since: int) -> None:
    """ExpiredCertsOnCRL (2.5.29.60, X.509 9.6.2.9): a GeneralizedTime whatever the year, not critical."""
    value = core.GeneralizedTime(datetime.fromtimestamp(since, UTC)).dump()
    expected = _Extension({"extn_id": "2.5.29.60", "critical": False, "extn_value": value}).dump(force=True)
    assert der.expired_certs_on_crl(since) == expected
    assert value[:2] == b"\x18\x0f"


@pytest.mark.parametrize("url", [None, "http://127.0.0.1:8080/crl/ac-personnes.crl"])
@pytest.mark.parametrize("flag", [None, "only_contains_user_certs", "only_contains_ca_certs",
                                  "only_contains_attribute_certs"])
def test_idp_flags_match_asn1crypto_and_cryptography(url: str | None, flag: str | None) -> None:
    if url is None and flag is None:
        with pytest.raises(ValueError, match="empty"):  # RFC 5280 forbids it; cryptography refuses to read it
            der.issuing_distribution_point(None)
        return
    value: dict[str, object] = {}
    if url:
        value["distribution_point"] = {"full_name": [ax509.GeneralName(name="uniform_resource_identifier",
                                                                       value=url)]}
    if flag:
        value[flag] = True
    expected = acrl.TBSCertListExtension({"extn_id": "issuing_distribution_point", "critical": True,
                                          "extn_value": value}).dump(force=True)
    kwargs = {"only_user": flag == "only_contains_user_certs", "only_ca": flag == "only_contains_ca_certs",
              "only_attribute": flag == "only_contains_attribute_certs"}
    ours = der.issuing_distribution_point(url, **kwargs)
    assert ours == expected
    # and cryptography reads the same flags back (the extension's value, parsed on its own)
    parsed = x509.load_der_x509_crl(_crl_with_extension(ours)).extensions.get_extension_for_class(
        x509.IssuingDistributionPoint)
    assert parsed.critical
    idp = parsed.value
    assert (idp.only_contains_user_certs, idp.only_contains_ca_certs, idp.only_contains_attribute_certs) == (
        kwargs["only_user"], kwargs["only_ca"], kwargs["only_attribute"])
    assert idp.full_name == ([x509.UniformResourceIdentifier(url)] if url else None)


def test_idp_refuses_two_scopes() -> None:
    for pair in ({"only_user": True, "only_ca": True}, {"only_ca": True, "only_attribute": True}):
        with pytest.raises(ValueError, match="at most one"):
            der.issuing_distribution_point("http://x/crl", **pair)


def _crl_with_extension(extension: bytes) -> bytes:
    """An unsigned CRL carrying ``extension`` (cryptography parses it without checking a signature)."""
    algorithm = bytes.fromhex("300d06092a864886f70d01010b0500")
    at = der.time(_ts(2026, 1, 1))
    tbs = der.sequence(b"\x02\x01\x01", algorithm, der.sequence(), at, der.tlv(0xA0, der.sequence(
        der.crl_number(1), extension)))
    return der.sequence(tbs, algorithm, der.tlv(0x03, b"\x00"))


def test_generalized_time_has_four_digit_years() -> None:
    """Year 1 is written '0001...', not '1...' as strftime would: a value no parser accepts."""
    year1 = int(datetime(1, 1, 1, tzinfo=UTC).timestamp())
    assert der.generalized_time(year1) == b"\x18\x0f00010101000000Z"
    with pytest.raises(ValueError, match="before 1950"):
        der.time(_ts(1949, 12, 31, 23, 59, 59))
    assert der.time(_ts(1950, 1, 1)) == b"\x17\x0d500101000000Z"


def test_unsigned_integer_from_octets_is_integer_of_their_value() -> None:
    """``der.unsigned_integer`` (octets, ECDSA's r and s) and ``der.integer`` (an int) write one encoding."""
    for octets in (b"", b"\x00", b"\x00\x00\x7f", b"\x80", b"\x00\x80", b"\xff" * 32, b"\x00" * 31 + b"\x01",
                   b"\x01" + b"\x00" * 65):
        assert der.unsigned_integer(octets) == der.integer(int.from_bytes(octets, "big")), octets
