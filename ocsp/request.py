"""Decoding OCSP requests (RFC 6960 §4.1) from POST bodies and GET paths, strictly and without surprises.

A request is read as strict DER (``directory.der_reader``): anything that is not the one canonical encoding
of a version-1 OCSPRequest becomes ``Malformed`` (answered with ``malformedRequest``), never an
exception that escapes. Only values come out (hash algorithm, hashes, serial, nonce): no byte of a
request is kept to be sent back, so nothing a client encodes can reach an answer (its own nonce aside).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from directory.der import DIGESTS
from directory.der_reader import BIT_STRING, SEQUENCE, SET, DerError, Reader

MAX_NONCE = 32
MAX_BODY = 10 * 1024  # a POST request's body: larger ones get 413 unread
MAX_SERIAL_OCTETS = 20  # RFC 5280 §4.1.2.2; the registry takes no longer serial either
# CertID hash algorithms we answer for (``der.DIGESTS``), by OID contents octets (what the reader gives)
_DIGEST_BY_OID = {d.oid: d for d in DIGESTS.values()}
NONCE_OID_CONTENTS = bytes.fromhex("2b0601050507300102")  # 1.3.6.1.5.5.7.48.1.2
_B64 = re.compile(rb"^[A-Za-z0-9+/]*={0,2}$")


class Malformed(ValueError):
    """The request cannot be understood; answered with malformedRequest."""


@dataclass(frozen=True)
class CertId:
    """One CertID's values (the answer carries their canonical encoding, never the request's bytes)."""

    hash_name: str
    name_hash: bytes
    key_hash: bytes
    serial: int


@dataclass(frozen=True)
class Request:
    cert_ids: tuple[CertId, ...]
    nonce: bytes | None  # echoed (re-encoded) to this requester only, when nonces are echoed


def parse_request(der: bytes, max_cert_ids: int = 10) -> Request:
    """The values of one strict-DER OCSPRequest; ``Malformed`` says what is wrong and where."""
    return parse_request_located(der, max_cert_ids)[0]


def parse_request_located(der: bytes, max_cert_ids: int = 10) -> tuple[Request, int]:
    """``parse_request``, and where the nonce's own octets are in ``der`` (-1: no nonce). Those octets are the
    contents of a primitive OCTET STRING: any others of the same length decode to the same request but for its
    nonce (``ocsp.nonced``)."""
    try:
        top = Reader(der)
        request = top.enter(SEQUENCE, "OCSPRequest")
        top.done("OCSPRequest")
        tbs = request.enter(SEQUENCE, "tbsRequest")
        signature = request.enter_optional(0xA0, "optionalSignature")
        if signature is not None:
            _signature(signature)
        request.done("OCSPRequest")
        version = tbs.enter_optional(0xA0, "version")
        if version is not None:
            number = version.integer("version")
            raise Malformed("version v1 encoded (DER leaves out DEFAULT values)" if number == 0
                            else f"unsupported version {number}")
        requestor = tbs.enter_optional(0xA1, "requestorName")
        if requestor is not None:
            _general_name(requestor)
        items = tbs.enter(SEQUENCE, "requestList")
        cert_ids: list[CertId] = []
        while not items.at_end():
            if len(cert_ids) == max_cert_ids:
                raise Malformed(f"more than {max_cert_ids} CertIDs")
            item = items.enter(SEQUENCE, "Request")
            cert_ids.append(_cert_id(item.enter(SEQUENCE, "reqCert")))
            single_extensions = item.enter_optional(0xA0, "singleRequestExtensions")
            if single_extensions is not None:
                _extensions(single_extensions, "singleRequestExtensions", understood=())
            item.done("Request")
        if not cert_ids:
            raise Malformed("empty requestList")
        nonce, nonce_at = None, -1
        extensions = tbs.enter_optional(0xA2, "requestExtensions")
        if extensions is not None:
            found = _extensions(extensions, "requestExtensions", understood=(NONCE_OID_CONTENTS,))
            if NONCE_OID_CONTENTS in found:
                value, value_at = found[NONCE_OID_CONTENTS]
                nonce = _nonce(value)
                nonce_at = value_at + len(value) - len(nonce)  # the inner OCTET STRING ends the extnValue
        tbs.done("tbsRequest")
        return Request(tuple(cert_ids), nonce), nonce_at
    except DerError as exc:
        raise Malformed(str(exc)) from None


def _cert_id(r: Reader) -> CertId:
    algorithm = r.enter(SEQUENCE, "hashAlgorithm")
    oid = algorithm.oid("hashAlgorithm")
    if not algorithm.at_end():
        algorithm.null("hashAlgorithm parameters (NULL or absent)")
    algorithm.done("hashAlgorithm")
    digest = _DIGEST_BY_OID.get(oid)
    if digest is None:
        raise Malformed(f"unsupported CertID hash algorithm {dotted(oid)}")
    hash_name, size = digest.name, digest.size
    name_hash = r.octet_string("issuerNameHash")
    key_hash = r.octet_string("issuerKeyHash")
    if len(name_hash) != size or len(key_hash) != size:
        raise Malformed(f"CertID hashes of {len(name_hash)} and {len(key_hash)} octets for {hash_name} "
                        f"({size} expected)")
    serial = r.integer("serialNumber")
    r.done("CertID")
    if serial < 0:
        raise Malformed("negative serial number")
    if serial.bit_length() > 8 * MAX_SERIAL_OCTETS:
        raise Malformed(f"serial number longer than {MAX_SERIAL_OCTETS} octets")
    return CertId(hash_name, name_hash, key_hash, serial)


def _extensions(explicit: Reader, what: str, understood: tuple[bytes, ...]) -> dict[bytes, tuple[bytes, int]]:
    """``Extensions`` (SIZE 1..MAX): OID contents -> (extnValue contents, their offset). Each OID at most once; an
    unknown critical one is refused (RFC 5280 §4.2); an unknown other one is checked as DER and ignored."""
    sequence = explicit.enter(SEQUENCE, what)
    explicit.done(what)
    found: dict[bytes, tuple[bytes, int]] = {}
    while not sequence.at_end():
        extension = sequence.enter(SEQUENCE, "Extension")
        oid = extension.oid("extnID")
        critical = False
        if extension.peek() == 0x01:
            critical = extension.boolean("critical")
            if not critical:
                raise Malformed(f"critical FALSE encoded in {what} (DER leaves out DEFAULT values)")
        value = extension.octet_string("extnValue")
        value_at = extension.pos - len(value)  # a primitive OCTET STRING: its contents end where the reader is
        extension.done("Extension")
        if oid in found:
            raise Malformed(f"extension {dotted(oid)} twice in {what}")
        if oid not in understood:
            if critical:
                raise Malformed(f"unsupported critical extension {dotted(oid)}")
            inner = Reader(value)
            inner.any(f"extension {dotted(oid)}")
            inner.done(f"extension {dotted(oid)}")
        found[oid] = value, value_at
    if not found:
        raise Malformed(f"empty {what}")
    return found


def _nonce(extn_value: bytes) -> bytes:
    """RFC 8954: the extension's value is an OCTET STRING of 1 to 32 octets."""
    inner = Reader(extn_value)
    nonce = inner.octet_string("nonce")
    inner.done("nonce")
    if not 1 <= len(nonce) <= MAX_NONCE:
        raise Malformed(f"nonce of {len(nonce)} octets (1 to {MAX_NONCE} allowed)")
    return nonce


_GENERAL_NAME_TAGS = {0xA0, 0x81, 0x82, 0xA3, 0xA4, 0xA5, 0x86, 0x87, 0x88}


def _general_name(explicit: Reader) -> None:
    """requestorName: one GeneralName (RFC 5280 §4.2.1.6), DER throughout, a directoryName checked down
    to its attributes (never used: a request need not be signed, and nothing of it is echoed)."""
    if explicit.peek() not in _GENERAL_NAME_TAGS:
        raise Malformed("requestorName is not a GeneralName")
    whole = Reader(explicit.data, explicit.pos, explicit.end)
    whole.any("requestorName")
    whole.done("requestorName")
    if explicit.peek() == 0xA4:
        directory = explicit.enter(0xA4, "directoryName")
        name = directory.enter(SEQUENCE, "Name")
        directory.done("directoryName")
        while not name.at_end():
            rdn = name.enter(SET, "RelativeDistinguishedName")
            if rdn.at_end():
                raise Malformed("empty RelativeDistinguishedName in requestorName")
            while not rdn.at_end():
                attribute = rdn.enter(SEQUENCE, "AttributeTypeAndValue")
                attribute.oid("attribute type")
                attribute.any("attribute value")
                attribute.done("AttributeTypeAndValue")


def _signature(explicit: Reader) -> None:
    """A signed request's ``Signature``: checked as DER, not verified (signatures are not required)."""
    signature = explicit.enter(SEQUENCE, "Signature")
    explicit.done("optionalSignature")
    algorithm = signature.enter(SEQUENCE, "signatureAlgorithm")
    algorithm.oid("signatureAlgorithm")
    if not algorithm.at_end():
        algorithm.any("signatureAlgorithm parameters")
    algorithm.done("signatureAlgorithm")
    if signature.peek() != BIT_STRING:
        raise Malformed("Signature without its BIT STRING")
    signature.any("signature")
    certs = signature.enter_optional(0xA0, "certs")
    if certs is not None:
        chain = certs.enter(SEQUENCE, "certs")
        certs.done("certs")
        while not chain.at_end():
            if chain.peek() != SEQUENCE:
                raise Malformed("certs holds something other than certificates")
            chain.any("certificate")
    signature.done("Signature")


def dotted(oid: bytes) -> str:
    """An OID's contents octets spelled 1.2.3 (for messages)."""
    arcs, value = [], 0
    for octet in oid:
        value = (value << 7) | (octet & 0x7F)
        if not octet & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        return "(empty)"
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def decode_get_path(raw_tail: str) -> bytes:
    """The DER of a GET request from the raw path after ``/ocsp/``.

    Tolerates what clients and proxies do to base64 in URLs: percent-encoding (``%2F``, ``%2B``, ``%3D``),
    raw ``+`` and ``/``, missing ``=`` padding, and extra slashes (``/ocsp//MEIw...``). A request's DER
    starts with a SEQUENCE, so its base64 starts with ``M``: leading slashes are never part of it.
    """
    data = unquote_to_bytes(raw_tail)  # '+' stays '+': this is a path, not a form
    data = data.lstrip(b"/").strip()
    data = data.replace(b"\n", b"").replace(b"\r", b"").replace(b" ", b"+")
    if not data:
        raise Malformed("empty GET request")
    data = data.rstrip(b"=")
    data += b"=" * (-len(data) % 4)
    if not _B64.match(data):
        raise Malformed("GET path is not base64")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Malformed("GET path is not base64") from None
