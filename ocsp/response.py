"""OCSP responses (RFC 6960 §4.2), hand-encoded in DER, spelled like the RFC.

A signed response is kept as two parts: ``ResponseData`` + signature (variable, a few hundred bytes) and
the responder's certificates (constant per responder). ``assemble`` glues them into an ``OCSPResponse``
when serving, so a million cached responses do not each carry a copy of the responder certificate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from directory import der
from directory.der import length

# OCSPResponseStatus
SUCCESSFUL, MALFORMED_REQUEST, INTERNAL_ERROR, TRY_LATER, SIG_REQUIRED, UNAUTHORIZED = 0, 1, 2, 3, 5, 6
STATUS_NAMES = {0: "successful", 1: "malformedRequest", 2: "internalError", 3: "tryLater", 5: "sigRequired",
                6: "unauthorized"}
_ID_PKIX_OCSP_BASIC = bytes.fromhex("06092b0601050507300101")  # 1.3.6.1.5.5.7.48.1.1
_ID_EXTENDED_REVOKE = bytes.fromhex("06092b0601050507300109")  # 1.3.6.1.5.5.7.48.1.9
_ID_NONCE = bytes.fromhex("06092b0601050507300102")  # 1.3.6.1.5.5.7.48.1.2
_NULL = b"\x05\x00"


def error_response(status: int) -> bytes:
    """An unsigned OCSPResponse carrying only a status (no responseBytes)."""
    return der.sequence(der.tlv(0x0A, bytes((status,))))


@dataclass(frozen=True)
class SingleStatus:
    """What to say about one CertID."""

    cert_id_der: bytes
    status: str  # good | revoked | unknown
    revocation_time: int | None = None
    reason_code: int | None = None


# Live answers signed in the same second share their times: each encoding is made once (a few µs each).
@lru_cache(maxsize=64)
def _time(ts: int) -> bytes:
    return der.generalized_time(ts)


@lru_cache(maxsize=64)
def _next_update(ts: int) -> bytes:
    return der.tlv(0xA0, der.generalized_time(ts))


@lru_cache(maxsize=64)
def _responder_id(responder_key_hash: bytes) -> bytes:
    return der.tlv(0xA2, der.octet_string(responder_key_hash))


def single_response(item: SingleStatus, this_update: int, next_update: int) -> bytes:
    if item.status == "good":
        cert_status = b"\x80\x00"
    elif item.status == "unknown":
        cert_status = b"\x82\x00"
    else:
        assert item.revocation_time is not None
        info = der.generalized_time(item.revocation_time)
        if item.reason_code:  # unspecified (0) is left out, as on CRLs
            info += der.tlv(0xA0, der.tlv(0x0A, bytes((item.reason_code,))))
        cert_status = der.tlv(0xA1, info)
    return der.sequence(item.cert_id_der, cert_status, _time(this_update), _next_update(next_update))


_EXTENDED_REVOKE = der.sequence(_ID_EXTENDED_REVOKE, der.octet_string(_NULL))


def response_data(responder_key_hash: bytes, produced_at: int, singles: list[bytes],
                  nonce: bytes | None, extended_revoke: bool) -> bytes:
    """ResponseData with responderID byKey (SHA-1 of the responder's public key bits).

    The nonce extension is encoded here from the nonce's value (RFC 8954), not copied from the request.
    Built with one join (headers computed from lengths): it is made for every live answer.
    """
    responses = b"".join(singles)
    parts = [_responder_id(responder_key_hash), _time(produced_at), der.header(0x30, len(responses)), responses]
    if nonce is not None or extended_revoke:
        exts = _nonce_head(len(nonce)) + nonce if nonce is not None else b""
        if extended_revoke:
            exts += _EXTENDED_REVOKE
        parts.append(der.tlv(0xA1, der.sequence(exts)))
    return b"".join((der.header(0x30, sum(map(len, parts))), *parts))


@lru_cache(maxsize=64)
def _nonce_head(size: int) -> bytes:
    """The nonce extension up to the nonce's own octets: ``Extension { id-pkix-ocsp-nonce, OCTET STRING {
    OCTET STRING { nonce } } }`` for a nonce of ``size`` octets (made once per size: every nonce answer has one)."""
    inner = der.header(0x04, size)
    value = der.header(0x04, len(inner) + size) + inner
    return der.header(0x30, len(_ID_NONCE) + len(value) + size) + _ID_NONCE + value


def signed_part(tbs: bytes, algorithm_der: bytes, signature: bytes) -> bytes:
    return tbs + algorithm_der + der.tlv(0x03, b"\x00" + signature)


def certs_field(cert_ders: list[bytes]) -> bytes:
    """``certs [0] EXPLICIT SEQUENCE OF Certificate``, or nothing."""
    return der.tlv(0xA0, der.sequence(*cert_ders)) if cert_ders else b""


@lru_cache(maxsize=256)
def _envelope(n: int) -> bytes:
    """OCSPResponse { successful, responseBytes { id-pkix-ocsp-basic, OCTET STRING { BasicOCSPResponse
    header } } } for a BasicOCSPResponse body of ``n`` octets: everything before that body (made once per
    length: one issuer's answers come in a few lengths)."""
    basic_header = b"\x30" + length(n)
    octet_len = len(basic_header) + n
    octet_header = b"\x04" + length(octet_len)
    inner_len = len(_ID_PKIX_OCSP_BASIC) + len(octet_header) + octet_len
    inner_header = b"\x30" + length(inner_len)
    tagged_len = len(inner_header) + inner_len
    tagged_header = b"\xa0" + length(tagged_len)
    total = 3 + len(tagged_header) + tagged_len
    return b"".join((b"\x30", length(total), b"\x0a\x01\x00", tagged_header, inner_header, _ID_PKIX_OCSP_BASIC,
                     octet_header, basic_header))


def assemble(signed: bytes, certs: bytes) -> bytes:
    """OCSPResponse { successful, responseBytes { id-pkix-ocsp-basic, BasicOCSPResponse } }.

    On the hot path of every pre-signed answer: a handful of length computations, no concatenated TLVs.
    """
    return b"".join((_envelope(len(signed) + len(certs)), signed, certs))


def assemble_signed(tbs: bytes, algorithm_der: bytes, signature: bytes, certs: bytes) -> bytes:
    """``assemble(signed_part(tbs, algorithm_der, signature), certs)``, each part copied once: a live answer
    is assembled from its pieces (its signed part is made only when the answer is also cached)."""
    bits_header = b"\x03" + length(len(signature) + 1) + b"\x00"
    n = len(tbs) + len(algorithm_der) + len(bits_header) + len(signature) + len(certs)
    return b"".join((_envelope(n), tbs, algorithm_der, bits_header, signature, certs))
