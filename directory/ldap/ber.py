"""The few LDAPv3 (RFC 4511) messages the sync sends and reads, in hand-written BER.

Why not ldap3's encoder: it goes through pyasn1 and tops out near 2.3k adds/s on this machine, below what
slapd accepts; building an AddRequest here costs a few microseconds. Only definite lengths, only the
operations we use; anything unexpected in a response raises ``BerError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from directory.crl.der import length, tlv  # definite-length encoding: the same in BER and DER

__all__ = ["length", "tlv"]  # re-exported: the LDAP code says ber.tlv
# RFC 4511 protocolOp tags ([APPLICATION n], constructed unless noted)
BIND_REQUEST, BIND_RESPONSE = 0x60, 0x61
UNBIND_REQUEST = 0x42  # primitive NULL
SEARCH_REQUEST, SEARCH_ENTRY, SEARCH_DONE, SEARCH_REFERENCE = 0x63, 0x64, 0x65, 0x73
MODIFY_REQUEST, MODIFY_RESPONSE = 0x66, 0x67
ADD_REQUEST, ADD_RESPONSE = 0x68, 0x69
DELETE_REQUEST, DELETE_RESPONSE = 0x4A, 0x6B  # DelRequest is a primitive [APPLICATION 10] LDAPDN
EXTENDED_REQUEST, EXTENDED_RESPONSE = 0x77, 0x78

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

def header(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at ``pos``; raises IndexError when ``buf`` is short."""
    tag = buf[pos]
    first = buf[pos + 1]
    if first < 0x80:
        start = pos + 2
        return tag, start, start + first
    n = first & 0x7F
    if n == 0 or n > 4:
        raise BerError("indefinite or oversized BER length")
    start = pos + 2 + n
    if start > len(buf):
        raise IndexError("short")
    return tag, start, start + int.from_bytes(buf[pos + 2:start], "big")


def frame_length(buf: bytearray, pos: int) -> int | None:
    """Total size of the message starting at ``pos`` when its header is complete, else None."""
    try:
        _, _start, end = header(buf, pos)
    except IndexError:
        return None
    return end - pos


def children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        tag, s, e = header(buf, pos)
        out.append((tag, s, e))
        pos = e
    if pos != end:
        raise BerError("element overruns its container")
    return out


def decode_int(buf: bytes, start: int, end: int) -> int:
    return int.from_bytes(buf[start:end], "big", signed=True)


def split_message(msg: bytes) -> tuple[int, int, int, int, list[tuple[int, int, int]]]:
    """LDAPMessage → (messageID, op tag, op start, op end, controls)."""
    if msg[0] != 0x30:
        raise BerError("LDAPMessage is not a SEQUENCE")
    start, end = _span(msg, 0)
    if msg[start] != 0x02:
        raise BerError("LDAPMessage without messageID")
    id_start, id_end = _span(msg, start)
    op_tag = msg[id_end]
    op_start, op_end = _span(msg, id_end)
    if op_end > end or end > len(msg):
        raise BerError("protocolOp overruns its message")
    controls: list[tuple[int, int, int]] = []
    if op_end < end and msg[op_end] == 0xA0:
        c_start, c_end = _span(msg, op_end)
        controls = children(msg, c_start, c_end)
    return decode_int(msg, id_start, id_end), op_tag, op_start, op_end, controls


def ldap_result(msg: bytes, start: int, end: int) -> tuple[int, str, str]:
    """LDAPResult components → (resultCode, matchedDN, diagnosticMessage)."""
    parts = children(msg, start, end)
    if len(parts) < 3:
        raise BerError("short LDAPResult")
    code = decode_int(msg, parts[0][1], parts[0][2])
    return (code, msg[parts[1][1]:parts[1][2]].decode("utf-8", "replace"),
            msg[parts[2][1]:parts[2][2]].decode("utf-8", "replace"))


def _span(msg: bytes, pos: int) -> tuple[int, int]:
    """(content start, content end) of the TLV at ``pos`` (definite lengths up to four octets)."""
    n = msg[pos + 1]
    if n < 0x80:
        return pos + 2, pos + 2 + n
    if n == 0x81:
        return pos + 3, pos + 3 + msg[pos + 2]
    if n == 0x82:
        return pos + 4, pos + 4 + (msg[pos + 2] << 8 | msg[pos + 3])
    _, start, end = header(msg, pos)
    return start, end


_NAMES: dict[bytes, str] = {}  # attribute descriptions seen (a handful): decoded once


def search_entry(msg: bytes, start: int, end: int) -> tuple[str, dict[str, list[bytes]]]:
    """SearchResultEntry → (DN, {attribute description: [values]})."""
    dn, pos, attrs_end = entry_header(msg, start)
    return dn, decode_attributes(msg, pos, attrs_end)


def entry_header(msg: bytes, start: int) -> tuple[str, int, int]:
    """SearchResultEntry → (DN, start and end of the attribute list's content), attributes left encoded."""
    s, e = _span(msg, start)
    pos, attrs_end = _span(msg, e)
    return msg[s:e].decode("utf-8"), pos, attrs_end


def decode_attributes(msg: bytes, pos: int, attrs_end: int) -> dict[str, list[bytes]]:
    """PartialAttributeList content → {description: [values]}. The hot path of a full read: short lengths
    are decoded inline (a call per TLV costs as much as the rest of the work)."""
    attrs: dict[str, list[bytes]] = {}
    names = _NAMES
    while pos < attrs_end:
        n = msg[pos + 1]
        if n < 0x80:
            a_start, a_end = pos + 2, pos + 2 + n
        else:
            a_start, a_end = _span(msg, pos)
        n = msg[a_start + 1]
        if n < 0x80:
            t_start, t_end = a_start + 2, a_start + 2 + n
        else:
            t_start, t_end = _span(msg, a_start)
        raw_name = msg[t_start:t_end]
        name = names.get(raw_name)
        if name is None:
            name = names.setdefault(raw_name, raw_name.decode("ascii"))
        n = msg[t_end + 1]
        if n < 0x80:
            v, v_end = t_end + 2, t_end + 2 + n
        else:
            v, v_end = _span(msg, t_end)
        values = []
        while v < v_end:
            n = msg[v + 1]
            if n < 0x80:
                vs, v = v + 2, v + 2 + n
            elif n == 0x82:
                vs = v + 4
                v = vs + (msg[v + 2] << 8 | msg[v + 3])
            else:
                vs, v = _span(msg, v)
            values.append(msg[vs:v])
        attrs[name] = values
        pos = a_end
    return attrs


def paged_cookie(msg: bytes, controls: list[tuple[int, int, int]]) -> bytes:
    """The paged-results cookie in a SearchResultDone's controls (empty: last page)."""
    for _, start, end in controls:
        parts = children(msg, start, end)
        if parts and msg[parts[0][1]:parts[0][2]] == PAGED_RESULTS_OID.encode():
            value = parts[-1]
            _, s, e = header(msg, value[1])
            inner = children(msg, s, e)
            return bytes(msg[inner[1][1]:inner[1][2]])
    return b""
