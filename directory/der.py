"""Hand-written DER for the CRL hot path, spelled like RFC 5280 §5.

A revoked entry is encoded once, when the certificate is revoked, and stored in the registry; a CRL is
then a concatenation of stored bytes with a few headers around it. ``tests/test_crl_der.py`` checks every
function here byte for byte against asn1crypto, so speed does not cost correctness.
"""

from __future__ import annotations

from datetime import UTC, datetime

# OIDs, DER-encoded (tag and length included)
OID_REASON_CODE = bytes.fromhex("0603551d15")  # 2.5.29.21
OID_INVALIDITY_DATE = bytes.fromhex("0603551d18")  # 2.5.29.24
OID_AUTHORITY_KEY_ID = bytes.fromhex("0603551d23")  # 2.5.29.35
OID_CRL_NUMBER = bytes.fromhex("0603551d14")  # 2.5.29.20
OID_DELTA_CRL_INDICATOR = bytes.fromhex("0603551d1b")  # 2.5.29.27
OID_ISSUING_DISTRIBUTION_POINT = bytes.fromhex("0603551d1c")  # 2.5.29.28
OID_FRESHEST_CRL = bytes.fromhex("0603551d2e")  # 2.5.29.46
OID_EXPIRED_CERTS_ON_CRL = bytes.fromhex("0603551d3c")  # 2.5.29.60
TRUE = b"\x01\x01\xff"

REMOVE_FROM_CRL = 8


def length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + length(len(body)) + body


def sequence(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def integer(value: int) -> bytes:
    """INTEGER, minimal two's complement (serials and CRL numbers are non-negative)."""
    if value < 0:
        raise ValueError("negative INTEGER not supported here")
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # leading 0x00 when the top bit is set
    if len(body) > 1 and body[0] == 0 and not body[1] & 0x80:
        body = body[1:]
    return tlv(0x02, body)


def octet_string(body: bytes) -> bytes:
    return tlv(0x04, body)


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def time(ts: int) -> bytes:
    """RFC 5280 Time: UTCTime 1950 through 2049, GeneralizedTime from 2050; seconds, 'Z', no fractions.

    Before 1950 there is no RFC 5280 encoding (a UTCTime would be read a century later): refused."""
    dt = _utc(ts)
    if dt.year < 1950:
        raise ValueError(f"{dt.isoformat()} is before 1950: no RFC 5280 Time for it")
    if dt.year < 2050:
        return tlv(0x17, dt.strftime("%y%m%d%H%M%SZ").encode())
    return generalized_time(ts)


def generalized_time(ts: int) -> bytes:
    """GeneralizedTime YYYYMMDDHHMMSSZ (RFC 5280 §4.1.2.5.2): four-digit year always (``strftime`` would
    write year 1 as ``1``, a value no parser accepts), seconds, no fractions."""
    dt = _utc(ts)
    text = f"{dt.year:04d}{dt.month:02d}{dt.day:02d}{dt.hour:02d}{dt.minute:02d}{dt.second:02d}Z"
    return tlv(0x18, text.encode())


def extension(oid: bytes, value: bytes, critical: bool = False) -> bytes:
    return sequence(oid, TRUE if critical else b"", octet_string(value))


def revoked_entry(serial: int, revocation_time: int, reason_code: int | None,
                  invalidity_date: int | None = None) -> bytes:
    """One revokedCertificates element; reasonCode omitted for unspecified (0), as RFC 5280 advises."""
    exts = b""
    if reason_code:
        exts += extension(OID_REASON_CODE, tlv(0x0A, bytes((reason_code,))))
    if invalidity_date is not None:
        exts += extension(OID_INVALIDITY_DATE, generalized_time(invalidity_date))
    return sequence(integer(serial), time(revocation_time), sequence(exts) if exts else b"")


def authority_key_identifier(key_id: bytes) -> bytes:
    return extension(OID_AUTHORITY_KEY_ID, sequence(tlv(0x80, key_id)))


def crl_number(number: int) -> bytes:
    return extension(OID_CRL_NUMBER, integer(number))


def delta_crl_indicator(base_number: int) -> bytes:
    return extension(OID_DELTA_CRL_INDICATOR, integer(base_number), critical=True)


def _uri_full_name(url: str) -> bytes:
    # DistributionPointName ::= CHOICE { fullName [0] GeneralNames }; GeneralName uniformResourceIdentifier [6]
    return tlv(0xA0, tlv(0xA0, tlv(0x86, url.encode("ascii"))))


def issuing_distribution_point(url: str | None, only_user: bool = False, only_ca: bool = False,
                               only_attribute: bool = False) -> bytes:
    """IssuingDistributionPoint (critical): the CRL's scope, and where it lives. The onlyContains* flags
    are DEFAULT FALSE, so only a true one is encoded ([1], [2], [5]); RFC 5280 §5.2.5 allows one at most."""
    if only_user + only_ca + only_attribute > 1:
        raise ValueError("at most one of onlyContainsUserCerts, onlyContainsCACerts, onlyContainsAttributeCerts")
    body = _uri_full_name(url) if url else b""
    if only_user:
        body += b"\x81\x01\xff"
    if only_ca:
        body += b"\x82\x01\xff"
    if only_attribute:
        body += b"\x85\x01\xff"
    if not body:
        raise ValueError("an empty IssuingDistributionPoint is forbidden (RFC 5280 §5.2.5)")
    return extension(OID_ISSUING_DISTRIBUTION_POINT, sequence(body), critical=True)


def freshest_crl(url: str) -> bytes:
    """FreshestCRL: where the delta CRL is (CRLDistributionPoints syntax)."""
    return extension(OID_FRESHEST_CRL, sequence(sequence(_uri_full_name(url))))


def expired_certs_on_crl(since: int) -> bytes:
    return extension(OID_EXPIRED_CERTS_ON_CRL, generalized_time(since))


def header(tag: int, body_length: int) -> bytes:
    """Tag and length of a constructed value whose body is written separately (streaming)."""
    return bytes((tag,)) + length(body_length)
