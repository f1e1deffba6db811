"""Our hand-written LDAP BER against ldap3's codec (pyasn1 with the RFC 4511 specifications of ldap3.protocol).

- every response the client reads, encoded by ldap3's codec, decodes to the same values with ours;
- every request the client sends, encoded by us, decodes to the same values with ldap3's codec;
- a length that overruns its container, a message cut short, any mutated byte: ours raises ``BerError``
  (never IndexError, UnicodeDecodeError, ...) or agrees with ldap3's codec, which accepts it too.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ldap3.protocol import rfc4511 as L
from ldap3.protocol.controls import build_control
from ldap3.protocol.rfc2696 import Cookie, RealSearchControlValue, Size
from pyasn1.codec.ber import decoder, encoder
from pyasn1.error import PyAsn1Error

from directory.ldap import ber

RESULTS = {"bindResponse": (ber.BIND_RESPONSE, L.BindResponse), "searchResDone": (ber.SEARCH_DONE, L.SearchResultDone),
           "modifyResponse": (ber.MODIFY_RESPONSE, L.ModifyResponse), "addResponse": (ber.ADD_RESPONSE, L.AddResponse),
           "delResponse": (ber.DELETE_RESPONSE, L.DelResponse), "extendedResp": (ber.EXTENDED_RESPONSE,
                                                                                  L.ExtendedResponse)}
message_ids = st.integers(0, ber.MAX_INT)
texts = st.text(max_size=40)
octet_strings = st.binary(max_size=300)
attribute_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}(;binary)?", fullmatch=True)
attribute_lists = st.dictionaries(attribute_names, st.lists(octet_strings, max_size=4), max_size=6)
codes = st.sampled_from([0, 1, 4, 16, 20, 21, 32, 49, 50, 51, 52, 53, 65, 66, 68, 80, 4096])


# -- ldap3's codec ----------------------------------------------------------------------------------------
def _ldap3_message(message_id: int, name: str, op: Any, cookie: bytes | None = None) -> bytes:
    message = L.LDAPMessage()
    message["messageID"] = message_id
    message["protocolOp"] = L.ProtocolOp().setComponentByName(name, op)
    if cookie is not None:
        value = RealSearchControlValue()
        value["size"], value["cookie"] = Size(0), Cookie(cookie)
        controls = L.Controls()
        controls.setComponentByPosition(0, build_control(ber.PAGED_RESULTS_OID, False, value))
        message["controls"] = controls
    return encoder.encode(message)


def ldap3_entry(message_id: int, dn: str, attributes: dict[str, list[bytes]]) -> bytes:
    entry = L.SearchResultEntry()
    entry["object"] = dn.encode()
    for i, (name, values) in enumerate(attributes.items()):
        partial = L.PartialAttribute()
        partial["type"] = name
        for j, value in enumerate(values):
            partial["vals"].setComponentByPosition(j, L.AttributeValue(value))
        entry["attributes"].setComponentByPosition(i, partial)
    return _ldap3_message(message_id, "searchResEntry", entry)


def ldap3_result(message_id: int, kind: str, code: int, matched: str, diagnostic: str,
                 cookie: bytes | None = None) -> bytes:
    result = RESULTS[kind][1]()
    result["resultCode"], result["matchedDN"], result["diagnosticMessage"] = code, matched.encode(), diagnostic
    return _ldap3_message(message_id, kind, result, cookie)


def ldap3_decode(data: bytes) -> tuple[Any, ...]:
    """What ldap3's codec reads in a response: the values our client uses."""
    message, rest = decoder.decode(data, asn1Spec=L.LDAPMessage())
    if rest:
        raise PyAsn1Error("bytes after the message")
    op = message["protocolOp"]
    name = op.getName()
    body = op.getComponent()
    message_id = int(message["messageID"])
    if name == "searchResEntry":
        return ("entry", message_id, bytes(body["object"]).decode(),
                {str(a["type"]): [bytes(v) for v in a["vals"]] for a in body["attributes"]})
    cookie = b""
    if message["controls"].isValue:
        for control in message["controls"]:
            if str(control["controlType"]) == ber.PAGED_RESULTS_OID:
                value, _ = decoder.decode(bytes(control["controlValue"]), asn1Spec=RealSearchControlValue())
                cookie = bytes(value["cookie"])
    return ("result", message_id, RESULTS[name][0], int(body["resultCode"]),
            bytes(body["matchedDN"]).decode("utf-8", "replace"),
            bytes(body["diagnosticMessage"]).decode("utf-8", "replace"), cookie)


# -- ours ------------------------------------------------------------------------------------------------
def ours(data: bytes) -> tuple[Any, ...]:
    """The client's reading of a response (split_message, then the decoder of its kind)."""
    message_id, tag, start, end, controls = ber.split_message(data)
    if tag == ber.SEARCH_ENTRY:
        dn, pos, attrs_end = ber.entry_header(data, start, end)
        return "entry", message_id, dn, ber.decode_attributes(data, pos, attrs_end)
    if tag not in {t for t, _ in RESULTS.values()}:
        raise ber.BerError("not a response the client reads")
    code, matched, diagnostic = ber.ldap_result(data, start, end)
    return "result", message_id, tag, code, matched, diagnostic, ber.paged_cookie(data, controls)


responses = st.one_of(
    st.builds(ldap3_entry, message_ids, texts, attribute_lists),
    st.builds(ldap3_result, message_ids, st.sampled_from(sorted(RESULTS)), codes, texts, texts,
              st.none() | st.binary(max_size=40)))


@settings(max_examples=300, deadline=None)
@given(message_id=message_ids, dn=texts, attributes=attribute_lists)
def test_entries_encoded_by_ldap3_decode_the_same_with_ours(message_id: int, dn: str,
                                                             attributes: dict[str, list[bytes]]) -> None:
    data = ldap3_entry(message_id, dn, attributes)
    assert ours(data) == ldap3_decode(data) == ("entry", message_id, dn, attributes)
    assert ber.frame_length(bytearray(data), 0) == len(data)


@settings(max_examples=300, deadline=None)
@given(message_id=message_ids, kind=st.sampled_from(sorted(RESULTS)), code=codes, matched=texts, diagnostic=texts,
       cookie=st.none() | st.binary(max_size=40))
def test_results_encoded_by_ldap3_decode_the_same_with_ours(message_id: int, kind: str, code: int, matched: str,
                                                             diagnostic: str, cookie: bytes | None) -> None:
    data = ldap3_result(message_id, kind, code, matched, diagnostic, cookie)
    assert ours(data) == ldap3_decode(data) == ("result", message_id, RESULTS[kind][0], code, matched, diagnostic,
                                                cookie or b"")


# -- requests: ours, read by ldap3's codec -----------------------------------------------------------------
def _request(data: bytes) -> tuple[int, str, Any, Any]:
    message, rest = decoder.decode(data, asn1Spec=L.LDAPMessage())
    assert rest == b""
    op = message["protocolOp"]
    return int(message["messageID"]), op.getName(), op.getComponent(), message["controls"]


@settings(max_examples=200, deadline=None)
@given(message_id=message_ids, dn=texts, attributes=attribute_lists.filter(bool))
def test_add_requests_decode_the_same_with_ldap3(message_id: int, dn: str, attributes: dict[str, list[bytes]]) -> None:
    got_id, name, op, _ = _request(ber.message(message_id, ber.add_request(dn, attributes)))
    assert (got_id, name, bytes(op["entry"]).decode()) == (message_id, "addRequest", dn)
    assert {str(a["type"]): [bytes(v) for v in a["vals"]] for a in op["attributes"]} == attributes


@settings(max_examples=200, deadline=None)
@given(message_id=message_ids, dn=texts, changes=st.lists(st.tuples(st.sampled_from([0, 1, 2]), attribute_names,
                                                                    st.lists(octet_strings, max_size=3)), max_size=5))
def test_modify_requests_decode_the_same_with_ldap3(message_id: int, dn: str, changes: list[Any]) -> None:
    got_id, name, op, _ = _request(ber.message(message_id, ber.modify_request(dn, changes)))
    assert (got_id, name, bytes(op["object"]).decode()) == (message_id, "modifyRequest", dn)
    assert [(int(c["operation"]), str(c["modification"]["type"]), [bytes(v) for v in c["modification"]["vals"]])
            for c in op["changes"]] == [(o, n, list(v)) for o, n, v in changes]


@settings(max_examples=200, deadline=None)
@given(message_id=message_ids, base=texts, scope=st.sampled_from([0, 1, 2]),
       attributes=st.lists(attribute_names | st.just("*") | st.just("1.1"), max_size=5),
       page=st.none() | st.tuples(st.integers(0, ber.MAX_INT), st.binary(max_size=40)))
def test_search_requests_and_the_paged_control_decode_the_same_with_ldap3(
        message_id: int, base: str, scope: int, attributes: list[str], page: tuple[int, bytes] | None) -> None:
    controls = [ber.paged_control(*page)] if page else []
    got_id, name, op, got_controls = _request(ber.message(message_id, ber.search_request(base, scope, attributes),
                                                          controls))
    assert (got_id, name, bytes(op["baseObject"]).decode(), int(op["scope"])) == (message_id, "searchRequest", base,
                                                                                   scope)
    assert (int(op["derefAliases"]), int(op["sizeLimit"]), int(op["timeLimit"]), bool(op["typesOnly"])) == \
        (0, 0, 0, False)
    assert op["filter"].getName() == "present" and str(op["filter"]["present"]) == "objectClass"
    assert [str(a) for a in op["attributes"]] == attributes
    if page is None:
        assert not got_controls.isValue
    else:
        (control,) = got_controls
        assert str(control["controlType"]) == ber.PAGED_RESULTS_OID and not bool(control["criticality"])
        value, _ = decoder.decode(bytes(control["controlValue"]), asn1Spec=RealSearchControlValue())
        assert (int(value["size"]), bytes(value["cookie"])) == page


@settings(max_examples=100, deadline=None)
@given(message_id=message_ids, name=texts, password=texts, dn=texts)
def test_bind_delete_starttls_and_unbind_decode_the_same_with_ldap3(message_id: int, name: str, password: str,
                                                                    dn: str) -> None:
    got_id, kind, op, _ = _request(ber.message(message_id, ber.bind_request(name, password)))
    assert (got_id, kind, int(op["version"]), bytes(op["name"]).decode()) == (message_id, "bindRequest", 3, name)
    assert bytes(op["authentication"]["simple"]).decode() == password
    _, kind, op, _ = _request(ber.message(message_id, ber.delete_request(dn)))
    assert (kind, bytes(op).decode()) == ("delRequest", dn)
    _, kind, op, _ = _request(ber.message(message_id, ber.extended_request(ber.START_TLS_OID)))
    assert (kind, str(op["requestName"])) == ("extendedReq", ber.START_TLS_OID) and not op["requestValue"].isValue
    _, kind, _, _ = _request(ber.message(message_id, ber.tlv(ber.UNBIND_REQUEST, b"")))
    assert kind == "unbindRequest"


# -- overruns, truncations, mutations ----------------------------------------------------------------------
def _elements(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """Every TLV in data[start:end], recursively: (position, content start, content end, container end)."""
    out = []
    pos = start
    while pos < end:
        tag, s, e = ber.header(data, pos, end)
        out.append((pos, s, e, end))
        if tag & 0x20:
            out += _elements(data, s, e)
        pos = e
    return out


def _with_length(data: bytes, pos: int, start: int, new_length: int) -> bytes | None:
    """``data`` with the TLV at ``pos`` claiming ``new_length`` (same number of length octets), or None."""
    octets = start - pos - 1
    if octets == 1:
        return data[:pos + 1] + bytes([new_length]) + data[start:] if new_length < 0x80 else None
    if new_length >= 1 << (8 * (octets - 1)):
        return None
    return data[:pos + 2] + new_length.to_bytes(octets - 1, "big") + data[start:]


def _agrees_or_refuses(data: bytes) -> None:
    """Ours raises BerError (and nothing else), or reads what ldap3's codec reads."""
    try:
        mine = ours(data)
    except ber.BerError:
        return
    assert mine == ldap3_decode(data), data.hex()


@settings(max_examples=300, deadline=None)
@given(data=responses, which=st.integers(0, 10**6), extra=st.integers(1, 300))
def test_a_length_overrunning_its_container_raises_ber_error(data: bytes, which: int, extra: int) -> None:
    elements = _elements(data, 0, len(data))[1:]  # inner elements (the message's own length frames it)
    pos, start, end, container = elements[which % len(elements)]
    mutated = _with_length(data, pos, start, end - start + (container - end) + extra)
    if mutated is None:
        return
    with pytest.raises(ber.BerError):
        ours(mutated)
    with pytest.raises(PyAsn1Error):
        ldap3_decode(mutated)


@settings(max_examples=300, deadline=None)
@given(data=responses, cut=st.integers(0, 10**6))
def test_a_message_cut_short_raises_ber_error_or_waits(data: bytes, cut: int) -> None:
    cut = cut % len(data)
    short = data[:cut]
    assert ber.frame_length(bytearray(short), 0) in (None, len(data))  # the reader waits for the rest
    with pytest.raises(ber.BerError):
        ours(short)
    # the same cut with every length around it fixed up: inner elements now overrun, or a shorter valid message
    _agrees_or_refuses(_refit(data, cut))


def _refit(data: bytes, cut: int) -> bytes:
    """``data`` cut at ``cut``, each element that contained the cut re-encoded to end there."""
    def rebuild(pos: int, limit: int) -> bytes:
        out = b""
        while pos < limit:
            tag, s, e = ber.header(data, pos)
            if e <= cut:
                out += data[pos:e]
            elif s < cut:  # the cut is inside: keep what is before it
                inner = rebuild(s, min(e, cut)) if tag & 0x20 else data[s:cut]
                out += ber.tlv(tag, inner)
            pos = e
        return out
    return rebuild(0, len(data))


@settings(max_examples=500, deadline=None)
@given(data=responses, position=st.integers(0, 10**6), byte=st.integers(0, 255))
def test_any_mutated_byte_raises_ber_error_or_reads_like_ldap3(data: bytes, position: int, byte: int) -> None:
    position %= len(data)
    _agrees_or_refuses(data[:position] + bytes([byte]) + data[position + 1:])


def test_the_overrun_of_the_issue_is_refused() -> None:
    """A value whose length overruns its SET was read into the next attribute: {'cn': [b'x0\\x0e\\x04\\x02sn1']}."""
    data = ldap3_entry(3, "cn=x", {"cn": [b"x"], "sn": [b"1"]})
    value = data.index(b"\x04\x01x")
    mutated = data[:value + 1] + bytes([1 + 16]) + data[value + 2:]
    with pytest.raises(ber.BerError):
        ours(mutated)
    with pytest.raises(PyAsn1Error):
        ldap3_decode(mutated)


@pytest.mark.parametrize("data", [b"\x30", b"\x30\x05\x02\x01\x01\x65", b"\x30\x84\x00\x00", b"\x30\x00",
                                  b"\x30\x03\x02\x01\x01", b"\x30\x05\x02\x00\x65\x00\x00",
                                  b"\x30\x0c\x02\x01\x01\x64\x07\x04\x02\xff\xfe\x30\x00\x00",
                                  b"\x30\x10\x02\x01\x01\x64\x0b\x04\x00\x30\x07\x30\x05\x04\x01\xe9\x31\x00",
                                  b"\x30\x06\x02\x01\x01\x7f\x65\x00"])
def test_malformed_responses_raise_ber_error_only(data: bytes) -> None:
    """Cut headers, empty INTEGERs, a DN or attribute name that is not UTF-8/ASCII, high tag numbers."""
    with pytest.raises(ber.BerError):
        ours(data)
