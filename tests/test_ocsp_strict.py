"""OCSP requests are strict DER: the canonical encoding of a request is accepted with its values, and any
other encoding of it (the cache-poisoning reproductions among them) is malformedRequest."""

from __future__ import annotations

import base64
import random
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from hypothesis import given, settings
from hypothesis import strategies as st

from ocsp.request import CertId, Malformed, decode_get_path, parse_request
from tests import ocsp_requests as build

HASHES = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}
SERIAL = 0x1F2E3D4C5B6A79880112233445566778  # 16 octets, top bit clear: 02 10 <16 octets> minimal


def _hashes(name: str) -> tuple[bytes, bytes]:
    size = build.DIGEST_SIZES[name]
    return bytes(range(size)), bytes(range(100, 100 + size))


@pytest.mark.parametrize("hash_name", list(HASHES))
def test_cryptography_and_hand_built_requests_give_their_values(hash_name: str) -> None:
    name_hash, key_hash = _hashes(hash_name)
    made = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, SERIAL, HASHES[hash_name]) \
        .add_extension(x509.OCSPNonce(b"n" * 16), critical=False).build().public_bytes(serialization.Encoding.DER)
    expected = CertId(hash_name, name_hash, key_hash, SERIAL)
    assert parse_request(made).cert_ids == (expected,) and parse_request(made).nonce == b"n" * 16
    for params in (build.NULL, None):  # NULL or absent parameters (RFC 5754 allows both)
        der = build.request(build.cert_id(hash_name, name_hash, key_hash, SERIAL, params=params))
        assert parse_request(der).cert_ids == (expected,)
    assert parse_request(decode_get_path(base64.b64encode(made).decode())).cert_ids == (expected,)


@pytest.mark.parametrize("hash_name", list(HASHES))
def test_the_poisoning_reproductions_are_malformed(hash_name: str) -> None:
    name_hash, key_hash = _hashes(hash_name)
    padded = build.non_minimal_serial(SERIAL)
    assert padded[:3] == b"\x02\x11\x00"  # exactly the issue's `02 11 00 <16 serial octets>`
    poisoned = {
        "non-minimal serial": build.request(build.cert_id(hash_name, name_hash, key_hash, SERIAL, serial_der=padded)),
        "junk parameters": build.request(build.cert_id(hash_name, name_hash, key_hash, SERIAL,
                                                       params=build.POISON_PARAMS)),
    }
    for what, der in poisoned.items():
        with pytest.raises(Malformed) as refused:
            parse_request(der)
        assert ("non-minimal INTEGER" if what == "non-minimal serial" else "hashAlgorithm parameters") in \
            str(refused.value)
        with pytest.raises(Malformed):  # the same over GET
            parse_request(decode_get_path(base64.b64encode(der).decode()))


def test_each_rule_with_its_message() -> None:
    name_hash, key_hash = _hashes("sha1")
    cid = build.cert_id("sha1", name_hash, key_hash, 5)
    ok = build.request(cid)
    table = {
        "trailing bytes": (ok + b"\x00", "unexpected octets after OCSPRequest"),
        "indefinite length": (b"\x30\x80" + ok[2:] + b"\x00\x00", "indefinite length"),
        "long-form length": (b"\x30\x81" + ok[1:], "non-minimal length"),
        "sha1 hash of 32 octets": (build.request(build.cert_id("sha1", bytes(32), bytes(32), 5)), "20 expected"),
        "negative serial": (build.request(build.cert_id("sha1", name_hash, key_hash, -5)), "negative serial"),
        "21-octet serial": (build.request(build.cert_id("sha1", name_hash, key_hash, 1 << 160)), "longer than 20"),
        "unknown hash": (build.request(build.seq(build.seq(build.tlv(0x06, bytes.fromhex("2a03"))),
                                                 build.tlv(0x04, name_hash), build.tlv(0x04, key_hash),
                                                 build.integer(5))), "unsupported CertID hash algorithm 1.2.3"),
        "critical unknown extension": (build.request(cid, extensions=build.seq(build.tlv(0x06, b"\x2a\x03"),
                                                                               b"\x01\x01\xff", build.tlv(0x04, NULL))),
                                       "unsupported critical extension 1.2.3"),
        "nonce of 33": (build.request(cid, nonce=b"x" * 33), "nonce of 33 octets"),
        "nonce not wrapped": (build.request(cid, extensions=build.seq(build.tlv(0x06, bytes.fromhex(build.NONCE_OID)),
                                                                      build.tlv(0x04, b"raw"))), "expected nonce"),
        "empty requestList": (build.seq(build.seq(build.seq())), "empty requestList"),
        "empty requestExtensions": (build.seq(build.seq(build.seq(build.seq(cid)) + build.tlv(0xA2, build.seq()))),
                                    "empty requestExtensions"),
    }
    for what, (der, message) in table.items():
        with pytest.raises(Malformed, match=message):
            parse_request(der)
        assert what
    with pytest.raises(Malformed, match="more than 2 CertIDs"):
        parse_request(build.request(cid, cid, cid), max_cert_ids=2)


NULL = b"\x05\x00"


def test_signed_request_and_requestor_name_are_accepted(demo_token: Path, tmp_path: Path) -> None:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=requestor"], check=True, capture_output=True)
    out = tmp_path / "req.der"
    subprocess.run(["openssl", "ocsp", "-issuer", str(demo_token / "ca" / "ac-personnes.pem"), "-cert",
                    str(demo_token / "ca" / "ocsp-ac-personnes.pem"), "-signer", str(cert), "-signkey", str(key),
                    "-reqout", str(out)], check=True, capture_output=True)
    signed = parse_request(out.read_bytes())  # requestorName, signature and certificate: DER, accepted
    assert len(signed.cert_ids) == 1 and signed.nonce is not None


# -- generated: every canonical request is accepted as its values; every accident is refused ---------------
@st.composite
def request_values(draw: st.DrawFn) -> tuple[list[CertId], bytes | None, bool, bool, bool]:
    cert_ids = []
    for _ in range(draw(st.integers(1, 3))):
        hash_name = draw(st.sampled_from(list(HASHES)))
        size = build.DIGEST_SIZES[hash_name]
        cert_ids.append(CertId(hash_name, draw(st.binary(min_size=size, max_size=size)),
                               draw(st.binary(min_size=size, max_size=size)), draw(st.integers(0, 2**160 - 1))))
    nonce = draw(st.none() | st.binary(min_size=1, max_size=32))
    return cert_ids, nonce, draw(st.booleans()), draw(st.booleans()), draw(st.booleans())


def _encode(values: tuple[list[CertId], bytes | None, bool, bool, bool]) -> bytes:
    cert_ids, nonce, critical, absent_params, extras = values
    cids = [build.cert_id(c.hash_name, c.name_hash, c.key_hash, c.serial, params=None if absent_params else NULL)
            for c in cert_ids]
    other = build.seq(build.tlv(0x06, bytes.fromhex("2b0601050507300107")), build.tlv(0x04, NULL)) if extras else b""
    requestor = build.tlv(0xA4, build.seq(build.tlv(0x31, build.seq(build.tlv(0x06, b"\x55\x04\x03"),
                                                                      build.tlv(0x0C, b"me"))))) if extras else b""
    return build.request(*cids, nonce=nonce, nonce_critical=critical, extensions=other, requestor=requestor)


@settings(max_examples=400, deadline=None)
@given(request_values())
def test_canonical_requests_decode_to_their_values(values: tuple[list[CertId], bytes | None, bool, bool, bool]) -> None:
    decoded = parse_request(_encode(values))
    assert list(decoded.cert_ids) == values[0] and decoded.nonce == values[1]


@settings(max_examples=1500, deadline=None)
@given(request_values(), st.sampled_from(build.ACCIDENTS), st.integers(0, 2**32 - 1))
def test_any_der_accident_is_malformed(values: tuple[list[CertId], bytes | None, bool, bool, bool], accident: str,
                                       seed: int) -> None:
    der = build.with_accident(_encode(values), accident, random.Random(seed))
    if der is None:  # the accident has no place in this request (no BOOLEAN, no nonce)
        return
    with pytest.raises(Malformed):
        parse_request(der)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    deep = build.tlv(0x05, b"")
    for _ in range(2500):  # ~8 KB, under the 10 KiB body cap
        deep = build.seq(deep)
    name_hash, key_hash = _hashes("sha1")
    cid = build.cert_id("sha1", name_hash, key_hash, 5)
    unknown = build.seq(build.tlv(0x06, bytes.fromhex("2b0601050507300107")), build.tlv(0x04, deep))
    for der in (build.request(cid, extensions=unknown), build.request(cid, requestor=build.tlv(0xA4, deep))):
        assert len(der) < 10 * 1024
        with pytest.raises(Malformed, match="nested more than"):
            parse_request(der)
