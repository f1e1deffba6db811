"""The project's DER toolkit: hand-written encoders spelled like the RFCs, and the digest OIDs.

Everything that writes DER uses these (CRLs, OCSP answers and CertIDs, LDAP's BER lengths, ECDSA
signatures, the demo's certificates); it imports nothing of ours. The CRL pieces follow RFC 5280 §5: a
revoked entry is encoded once, when the certificate is revoked, and stored in the registry; a CRL is then
a concatenation of stored bytes with a few headers around it. ``tests/test_crl_der.py`` checks every
function here byte for byte against asn1crypto, so speed does not cost correctness. Reading DER from the
network is ``directory.der_reader``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

# universal tags (the constructed ones with their constructed bit)
BOOLEAN, INTEGER, BIT_STRING, OCTET_STRING, NULL, OID, ENUMERATED = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0A
UTC_TIME, GENERALIZED_TIME = 0x17, 0x18
SEQUENCE, SET = 0x30, 0x31


@dataclass(frozen=True)
class Digest:
    """A digest algorithm as CertIDs and DigestInfos name it (RFC 3279 §2.2, RFC 5754 §2)."""

    name: str  # hashlib's name
    oid: bytes  # the OID's contents octets (what a DER reader hands back)
    size: int  # octets


# The one table of digest algorithms: OCSP CertIDs take all four, signatures the SHA-2 ones.
DIGESTS = {d.name: d for d in (Digest("sha1", bytes.fromhex("2b0e03021a"), 20),  # 1.3.14.3.2.26
                               Digest("sha256", bytes.fromhex("608648016503040201"), 32),  # 2.16.840.1.101.3.4.2.1
                               Digest("sha384", bytes.fromhex("608648016503040202"), 48),  # 2.16.840.1.101.3.4.2.2
                               Digest("sha512", bytes.fromhex("608648016503040203"), 64))}  # 2.16.840.1.101.3.4.2.3

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
    """Definite length, minimal (the same in BER): short form below 128, else the fewest octets."""
    if n < 0x80:
        return bytes((n,))
    if n < 0x100:
        return bytes((0x81, n))
    if n < 0x10000:
        return bytes((0x82, n >> 8, n & 0xFF))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + length(len(body)) + body


def sequence(*parts: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(parts))


def integer(value: int) -> bytes:
    """INTEGER, minimal two's complement (serials and CRL numbers are non-negative)."""
    if value < 0:
        raise ValueError("negative INTEGER not supported here")
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # leading 0x00 when the top bit is set
    if len(body) > 1 and body[0] == 0 and not body[1] & 0x80:
        body = body[1:]
    return tlv(INTEGER, body)


def unsigned_integer(octets: bytes) -> bytes:
    """INTEGER for a big-endian unsigned value given as octets (ECDSA's r and s): leading zeros dropped, one
    0x00 put back when the top bit is set; what ``integer`` gives for the same value, without an ``int``."""
    octets = octets.lstrip(b"\x00") or b"\x00"
    if octets[0] & 0x80:
        octets = b"\x00" + octets
    return bytes((INTEGER,)) + length(len(octets)) + octets


def octet_string(body: bytes) -> bytes:
    return tlv(OCTET_STRING, body)


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def time(ts: int) -> bytes:
    """RFC 5280 Time: UTCTime 1950 through 2049, GeneralizedTime from 2050; seconds, 'Z', no fractions.

    Before 1950 there is no RFC 5280 encoding (a UTCTime would be read a century later): refused."""
    dt = _utc(ts)
    if dt.year < 1950:
        raise ValueError(f"{dt.isoformat()} is before 1950: no RFC 5280 Time for it")
    if dt.year < 2050:
        return tlv(UTC_TIME, dt.strftime("%y%m%d%H%M%SZ").encode())
    return generalized_time(ts)


def generalized_time(ts: int) -> bytes:
    """GeneralizedTime YYYYMMDDHHMMSSZ (RFC 5280 §4.1.2.5.2): four-digit year always (``strftime`` would
    write year 1 as ``1``, a value no parser accepts), seconds, no fractions."""
    dt = _utc(ts)
    text = f"{dt.year:04d}{dt.month:02d}{dt.day:02d}{dt.hour:02d}{dt.minute:02d}{dt.second:02d}Z"
    return tlv(GENERALIZED_TIME, text.encode())


def extension(oid: bytes, value: bytes, critical: bool = False) -> bytes:
    return sequence(oid, TRUE if critical else b"", octet_string(value))


def revoked_entry(serial: int, revocation_time: int, reason_code: int | None,
                  invalidity_date: int | None = None) -> bytes:
    """One revokedCertificates element; reasonCode omitted for unspecified (0), as RFC 5280 advises."""
    exts = b""
    if reason_code:
        exts += extension(OID_REASON_CODE, tlv(ENUMERATED, bytes((reason_code,))))
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


def digest_algorithm(name: str) -> bytes:
    """AlgorithmIdentifier of a digest with NULL parameters (as OpenSSL writes CertIDs and DigestInfos)."""
    return sequence(tlv(OID, DIGESTS[name].oid), b"\x05\x00")


def digest_info_prefix(name: str) -> bytes:
    """DigestInfo (RFC 8017 §9.2) up to the digest itself: prefix + digest is the whole DigestInfo."""
    algorithm = digest_algorithm(name)
    size = DIGESTS[name].size
    return header(SEQUENCE, len(algorithm) + 2 + size) + algorithm + header(OCTET_STRING, size)
