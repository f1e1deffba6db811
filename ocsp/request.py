"""Decoding OCSP requests (RFC 6960 §4.1) from POST bodies and GET paths, strictly and without surprises.

Anything that is not a well-formed version-1 OCSPRequest becomes ``Malformed`` (answered with
``malformedRequest``), never an exception that escapes.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from asn1crypto import ocsp as aocsp

MAX_NONCE = 32
# CertID hash algorithms we answer for: OID -> hashlib name
HASHES = {"1.3.14.3.2.26": "sha1", "2.16.840.1.101.3.4.2.1": "sha256", "2.16.840.1.101.3.4.2.2": "sha384",
          "2.16.840.1.101.3.4.2.3": "sha512"}
_NONCE_OID = "1.3.6.1.5.5.7.48.1.2"
_B64 = re.compile(rb"^[A-Za-z0-9+/]*={0,2}$")


class Malformed(ValueError):
    """The request cannot be understood; answered with malformedRequest."""


@dataclass(frozen=True)
class CertId:
    """One CertID as sent: its DER is echoed verbatim in the response."""

    der: bytes
    hash_name: str
    name_hash: bytes
    key_hash: bytes
    serial: int


@dataclass(frozen=True)
class Request:
    cert_ids: tuple[CertId, ...]
    nonce_extension: bytes | None  # the whole Extension DER, echoed verbatim when nonces are echoed
    nonce: bytes | None


def parse_request(der: bytes, max_cert_ids: int = 10) -> Request:
    if not der or der[0] != 0x30:
        raise Malformed("not a DER SEQUENCE")
    try:
        request = aocsp.OCSPRequest.load(der, strict=True)
        tbs = request["tbs_request"]
        if tbs["version"].native != "v1":
            raise Malformed("unsupported version")
        items = list(tbs["request_list"])
        if not items:
            raise Malformed("empty requestList")
        if len(items) > max_cert_ids:
            raise Malformed(f"more than {max_cert_ids} CertIDs")
        cert_ids = tuple(_cert_id(item) for item in items)
        nonce_ext = nonce = None
        for ext in tbs["request_extensions"] or []:
            if ext["extn_id"].dotted == _NONCE_OID:
                nonce_ext = ext.dump()
                value = ext["extn_value"].parsed
                nonce = bytes(value.native) if value is not None else b""
                if not 1 <= len(nonce) <= MAX_NONCE:
                    raise Malformed(f"nonce of {len(nonce)} octets (1 to {MAX_NONCE} allowed)")
            elif ext["critical"].native:
                raise Malformed(f"unsupported critical extension {ext['extn_id'].dotted}")
        return Request(cert_ids, nonce_ext, nonce)
    except Malformed:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise Malformed(f"undecodable request: {type(exc).__name__}") from None


def _cert_id(item: aocsp.Request) -> CertId:
    cid = item["req_cert"]
    oid = cid["hash_algorithm"]["algorithm"].dotted
    hash_name = HASHES.get(oid)
    if hash_name is None:
        raise Malformed(f"unsupported CertID hash algorithm {oid}")
    name_hash, key_hash = bytes(cid["issuer_name_hash"].native), bytes(cid["issuer_key_hash"].native)
    serial = cid["serial_number"].native
    if serial < 0:
        raise Malformed("negative serial number")
    return CertId(cid.dump(), hash_name, name_hash, key_hash, serial)


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
    if not _B64.match(data) or len(data) % 4 == 1:
        raise Malformed("GET path is not base64")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Malformed("GET path is not base64") from None
