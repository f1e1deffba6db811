"""CertIDs (RFC 6960 §4.1.1) built from values: the only CertID bytes an answer ever carries.

An answer names its certificate with the canonical encoding of (hash algorithm with NULL parameters,
issuer name hash, issuer key hash, serial), whatever spelling the request used. Relying parties match
CertIDs by value (OpenSSL compares the algorithm OID, the hashes and the serial), so every client gets
an answer it recognises, and a cached answer holds nothing any client chose.
"""

from __future__ import annotations

import functools
import hashlib

from asn1crypto import keys
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from directory import der
from directory.der_reader import SEQUENCE, DerError, Reader

_ALGORITHMS = {name: der.digest_algorithm(name) for name in der.DIGESTS}


def key_hash(cert: x509.Certificate, hash_name: str) -> bytes:
    """Hash of the subjectPublicKey BIT STRING contents (RFC 6960 issuerKeyHash, responderID byKey)."""
    spki = keys.PublicKeyInfo.load(cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    return hashlib.new(hash_name, spki["public_key"].contents[1:]).digest()


def issuer_hashes(issuer: x509.Certificate, hash_name: str) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of certificates issued by ``issuer``."""
    return hashlib.new(hash_name, issuer.subject.public_bytes()).digest(), key_hash(issuer, hash_name)


def prefix(hash_name: str, name_hash: bytes, key_hash_: bytes) -> bytes:
    """Everything of a CertID before the serial (constant per issuer and hash algorithm)."""
    return _ALGORITHMS[hash_name] + der.octet_string(name_hash) + der.octet_string(key_hash_)


def encode(prefix_: bytes, serial: int) -> bytes:
    """The canonical CertID for ``serial`` (non-negative) after ``prefix(...)``."""
    return der.tlv(SEQUENCE, prefix_ + der.integer(serial))


def of_signed_part(signed: bytes) -> bytes | None:
    """The CertID bytes of a stored single-response answer (ResponseData + signature), or None when it
    is not one strict-DER ResponseData with exactly one SingleResponse."""
    try:
        data = Reader(signed).enter(SEQUENCE, "ResponseData")
        if data.peek() == 0xA0:
            data.any("version")
        data.any("responderID")
        data.any("producedAt")
        responses = data.enter(SEQUENCE, "responses")
        single = responses.enter(SEQUENCE, "SingleResponse")
        if not responses.at_end():
            return None
        if single.peek() != SEQUENCE:
            return None
        return single.any("CertID")
    except DerError:
        return None


def responder_id(key_hash_: bytes) -> bytes:
    """ResponderID byKey (``[2] EXPLICIT OCTET STRING``): the SHA-1 of the responder's public key bits."""
    return der.tlv(0xA2, der.octet_string(key_hash_))


def responder_of_signed_part(signed: bytes) -> bytes | None:
    """The responderID bytes of a stored answer (which key signed it), or None when unreadable."""
    try:
        data = Reader(signed).enter(SEQUENCE, "ResponseData")
        if data.peek() == 0xA0:
            data.any("version")
        return data.any("responderID")
    except DerError:
        return None


@functools.lru_cache(maxsize=64)
def _issuer_prefix(issuer_certificate_der: bytes, hash_name: str) -> bytes:
    issuer = x509.load_der_x509_certificate(issuer_certificate_der)
    return prefix(hash_name, *issuer_hashes(issuer, hash_name))


def is_canonical_answer(issuer_certificate_der: bytes, serial_hex: str, hash_name: str, signed: bytes) -> bool:
    """Whether a stored answer (registry row) names exactly the canonical CertID of its key columns."""
    if hash_name not in der.DIGESTS:
        return False
    try:
        serial = int(serial_hex, 16)
    except ValueError:
        return False
    if serial < 0:
        return False
    return of_signed_part(signed) == encode(_issuer_prefix(issuer_certificate_der, hash_name), serial)
