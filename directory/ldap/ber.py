"""The few LDAPv3 (RFC 4511) messages the sync sends and reads, in hand-written BER.

Why not ldap3's encoder: it goes through pyasn1 and tops out near 2.3k adds/s on this machine, below what
slapd accepts; building an AddRequest here costs a few microseconds. Only definite lengths, only the
operations we use; anything unexpected in a response raises ``BerError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from directory.der import length, tlv  # definite-length encoding: the same in BER and DER

__all__ = ["length", "tlv"]  # re-exported: the LDAP code says ber.tlv
# RFC 4511 protocolOp tags ([APPLICATION n], constructed unless noted)
BIND_REQUEST, BIND_RESPONSE = 0x60, 0x61
UNBIND_REQUEST = 0x42  # primitive NULL
SEARCH_REQUEST, SEARCH_ENTRY, SEARCH_DONE, SEARCH_REFERENCE = 0x63, 0x64, 0x65, 0x73
MODIFY_REQUEST, MODIFY_RESPONSE = 0x66, 0x67
ADD_REQUEST, ADD_RESPONSE = 0x68, 0x69
DELETE_REQUEST, DELETE_RESPONSE = 0x4A, 0x6B  # DelRequest is a primitive [APPLICATION 10] LDAPDN
EXTENDED_REQUEST, EXTENDED_RESPONSE = 0x77, 0x78

MAX_INT = 2**31 - 1  # RFC 4511 maxInt
SCOPE_BASE, SCOPE_ONE, SCOPE_SUBTREE = 0, 1, 2
MOD_ADD, MOD_DELETE, MOD_REPLACE = 0, 1, 2
PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
START_TLS_OID = "1.3.6.1.4.1.1466.20037"


class BerError(ValueError):
    """A response that is not the BER we expect."""


def integer(value: int, tag: int = 0x02) -> bytes:
    return tlv(tag, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def octets(value: bytes | str, tag: int = 0x04) -> bytes:
    return tlv(tag, value.encode() if isinstance(value, str) else value)


def sequence(*parts: bytes, tag: int = 0x30) -> bytes:
    return tlv(tag, b"".join(parts))


def attribute(name: str, values: Iterable[bytes]) -> bytes:
    """PartialAttribute ::= SEQUENCE { type, vals SET OF value }"""
    return sequence(octets(name), tlv(0x31, b"".join(octets(v) for v in values)))


def message(message_id: int, op: bytes, controls: Sequence[bytes] = ()) -> bytes:
    parts = [integer(message_id), op]
    if controls:
        parts.append(sequence(*controls, tag=0xA0))
    return sequence(*parts)


def control(oid: str, value: bytes | None = None, critical: bool = False) -> bytes:
    parts = [octets(oid)]
    if critical:
        parts.append(b"\x01\x01\xff")
    if value is not None:
        parts.append(octets(value))
    return sequence(*parts)


def bind_request(name: str, password: str) -> bytes:
    return sequence(integer(3), octets(name), octets(password, 0x80), tag=BIND_REQUEST)


def search_request(base: str, scope: int, attributes: Sequence[str], present: str = "objectClass") -> bytes:
    """Search ``base`` with the filter ``(present=*)``, no size or time limit of our own, aliases never deref."""
    return sequence(octets(base), integer(scope, 0x0A), integer(0, 0x0A), integer(0), integer(0), b"\x01\x01\x00",
                    octets(present, 0x87), sequence(*(octets(a) for a in attributes)), tag=SEARCH_REQUEST)


def paged_control(size: int, cookie: bytes) -> bytes:
    return control(PAGED_RESULTS_OID, sequence(integer(size), octets(cookie)))


def add_request(dn: str, attributes: dict[str, list[bytes]]) -> bytes:
    return sequence(octets(dn), sequence(*(attribute(n, v) for n, v in attributes.items())), tag=ADD_REQUEST)


def modify_request(dn: str, changes: Sequence[tuple[int, str, Sequence[bytes]]]) -> bytes:
    return sequence(octets(dn), sequence(*(sequence(integer(op, 0x0A), attribute(name, values))
                                           for op, name, values in changes)), tag=MODIFY_REQUEST)


def delete_request(dn: str) -> bytes:
    return octets(dn, DELETE_REQUEST)


def extended_request(oid: str) -> bytes:
    return sequence(octets(oid, 0x80), tag=EXTENDED_REQUEST)


# -- decoding -------------------------------------------------------------------------------------------
# Every element is checked against its container (and the message against its buffer): a length that
# overruns is an error, never bytes read from the next element. Only BerError leaves these functions.

class Incomplete(BerError):
    """The buffer ends before the element does (a message still arriving, or one cut short)."""


def header(buf: bytes | bytearray | memoryview, pos: int, limit: int | None = None) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at ``pos``, which must end by ``limit`` (default: the
    buffer's end: ``Incomplete`` past it). Definite lengths of up to four octets, low tag numbers only."""
    size = len(buf)
    if pos + 2 > size:
        raise Incomplete("element header cut short")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise BerError("high tag number (not used by LDAP)")
    first = buf[pos + 1]
    if first < 0x80:
        start = pos + 2
        end = start + first
    else:
        n = first & 0x7F
        if n == 0 or n > 4:
            raise BerError("indefinite or oversized BER length")
        start = pos + 2 + n
        if start > size:
            raise Incomplete("element length cut short")
        end = start + int.from_bytes(buf[pos + 2:start], "big")
    if limit is not None and end > limit:
        raise BerError("element overruns its container")
    return tag, start, end


def frame_length(buf: bytearray, pos: int) -> int | None:
    """Total size of the message starting at ``pos`` when its header is complete, else None."""
    try:
        _, _start, end = header(buf, pos)
    except Incomplete:
        return None
    return end - pos


def _element(msg: bytes, pos: int, limit: int, tag: int, what: str) -> tuple[int, int]:
    """(content start, content end) of the element at ``pos`` that must carry ``tag`` and end by ``limit``."""
    if pos >= limit:
        raise BerError(f"{what} missing")
    try:
        got, start, end = header(msg, pos, limit)
    except Incomplete:
        raise BerError(f"{what} overruns the message") from None
    if got != tag:
        raise BerError(f"{what}: tag {got:#04x} where {tag:#04x} was expected")
    return start, end


def children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """The TLVs that exactly fill ``buf[start:end]``."""
    out = []
    pos = start
    while pos < end:
        try:
            tag, s, e = header(buf, pos, end)
        except Incomplete:
            raise BerError("element overruns its container") from None
        out.append((tag, s, e))
        pos = e
    return out


def decode_int(buf: bytes, start: int, end: int) -> int:
    if not start < end <= start + 8:
        raise BerError("INTEGER of no or too many octets")
    return int.from_bytes(buf[start:end], "big", signed=True)


def split_message(msg: bytes) -> tuple[int, int, int, int, list[tuple[int, int, int]]]:
    """LDAPMessage → (messageID, op tag, op start, op end, controls). ``msg`` is exactly one message."""
    start, end = _element(msg, 0, len(msg), 0x30, "LDAPMessage")
    if end != len(msg):
        raise BerError("bytes after the LDAPMessage")
    id_start, id_end = _element(msg, start, end, 0x02, "messageID")
    message_id = decode_int(msg, id_start, id_end)
    if not 0 <= message_id <= MAX_INT:
        raise BerError("messageID out of range")
    if id_end >= end:
        raise BerError("LDAPMessage without protocolOp")
    try:
        op_tag, op_start, op_end = header(msg, id_end, end)
    except Incomplete:
        raise BerError("protocolOp overruns its message") from None
    controls: list[tuple[int, int, int]] = []
    if op_end < end:
        c_start, c_end = _element(msg, op_end, end, 0xA0, "controls")
        if c_end != end:
            raise BerError("bytes after the controls")
        controls = children(msg, c_start, c_end)
    return message_id, op_tag, op_start, op_end, controls


def ldap_result(msg: bytes, start: int, end: int) -> tuple[int, str, str]:
    """LDAPResult components → (resultCode, matchedDN, diagnosticMessage); what may follow (referral,
    SASL credentials, an extended response's name and value) is bounds-checked and ignored."""
    parts = children(msg, start, end)
    if len(parts) < 3 or [p[0] for p in parts[:3]] != [0x0A, 0x04, 0x04]:
        raise BerError("LDAPResult is not resultCode, matchedDN, diagnosticMessage")
    if any(p[0] not in _RESULT_EXTRAS for p in parts[3:]):
        raise BerError("unexpected element after an LDAPResult")
    code = decode_int(msg, parts[0][1], parts[0][2])
    return (code, msg[parts[1][1]:parts[1][2]].decode("utf-8", "replace"),
            msg[parts[2][1]:parts[2][2]].decode("utf-8", "replace"))


_RESULT_EXTRAS = {0xA3, 0x87, 0x8A, 0x8B}  # referral; bind: serverSaslCreds; extended: responseName, responseValue
_NAMES: dict[bytes, str] = {}  # attribute descriptions seen (a handful): decoded once


def entry_header(msg: bytes, start: int, end: int) -> tuple[str, int, int]:
    """SearchResultEntry content → (DN, start and end of the attribute list's content), attributes left
    encoded (``decode_attributes``, on first use)."""
    s, e = _element(msg, start, end, 0x04, "objectName")
    pos, attrs_end = _element(msg, e, end, 0x30, "attributes")
    if attrs_end != end:
        raise BerError("bytes after the attributes")
    try:
        return msg[s:e].decode("utf-8"), pos, attrs_end
    except UnicodeDecodeError:
        raise BerError("objectName is not UTF-8") from None


def decode_attributes(msg: bytes, pos: int, attrs_end: int) -> dict[str, list[bytes]]:
    """PartialAttributeList content → {description: [values]}. The hot path of a full read: short lengths
    are decoded inline (a call per TLV costs as much as the rest of the work), each checked against its
    container; anything else goes through ``header``."""
    attrs: dict[str, list[bytes]] = {}
    names = _NAMES
    try:
        while pos < attrs_end:
            n = msg[pos + 1]
            if msg[pos] != 0x30:
                raise BerError("PartialAttribute is not a SEQUENCE")
            if n < 0x80:
                a_start, a_end = pos + 2, pos + 2 + n
            else:
                _, a_start, a_end = header(msg, pos)
            if a_end > attrs_end:
                raise BerError("attribute overruns the attribute list")
            n = msg[a_start + 1]
            if msg[a_start] != 0x04:
                raise BerError("attribute type is not an OCTET STRING")
            if n < 0x80:
                t_start, t_end = a_start + 2, a_start + 2 + n
            else:
                _, t_start, t_end = header(msg, a_start)
            if t_end >= a_end:
                raise BerError("attribute type overruns its attribute, or no values")
            raw_name = msg[t_start:t_end]
            name = names.get(raw_name)
            if name is None:
                name = names.setdefault(raw_name, raw_name.decode("ascii"))
            n = msg[t_end + 1]
            if msg[t_end] != 0x31:
                raise BerError("attribute values are not a SET")
            if n < 0x80:
                v, v_end = t_end + 2, t_end + 2 + n
            else:
                _, v, v_end = header(msg, t_end)
            if v_end != a_end:
                raise BerError("attribute values do not end with their attribute")
            values = []
            while v < v_end:
                n = msg[v + 1]
                if msg[v] != 0x04:
                    raise BerError("attribute value is not an OCTET STRING")
                if n < 0x80:
                    vs, v = v + 2, v + 2 + n
                elif n == 0x82:
                    vs = v + 4
                    v = vs + (msg[v + 2] << 8 | msg[v + 3])
                else:
                    _, vs, v = header(msg, v)
                if v > v_end:
                    raise BerError("attribute value overruns its SET")
                values.append(msg[vs:v])
            attrs[name] = values
            pos = a_end
    except (IndexError, Incomplete):
        raise BerError("attribute list overruns the message") from None
    except UnicodeDecodeError:
        raise BerError("attribute description is not ASCII") from None
    if pos != attrs_end:
        raise BerError("attribute overruns the attribute list")
    return attrs


def paged_cookie(msg: bytes, controls: list[tuple[int, int, int]]) -> bytes:
    """The paged-results cookie in a SearchResultDone's controls (empty: last page)."""
    for tag, start, end in controls:
        if tag != 0x30:
            raise BerError("Control is not a SEQUENCE")
        parts = children(msg, start, end)
        if not parts or parts[0][0] != 0x04:
            raise BerError("Control without controlType")
        if msg[parts[0][1]:parts[0][2]] != PAGED_RESULTS_OID.encode():
            continue
        value = parts[-1]
        if len(parts) < 2 or value[0] != 0x04:
            raise BerError("paged-results control without a value")
        s, e = _element(msg, value[1], value[2], 0x30, "paged-results value")
        if e != value[2]:
            raise BerError("bytes after the paged-results value")
        inner = children(msg, s, e)
        if len(inner) != 2 or [t for t, _, _ in inner] != [0x02, 0x04]:
            raise BerError("paged-results value is not size, cookie")
        if not 0 <= decode_int(msg, inner[0][1], inner[0][2]) <= MAX_INT:
            raise BerError("paged-results size out of range")
        return bytes(msg[inner[1][1]:inner[1][2]])
    return b""
