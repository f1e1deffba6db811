"""Nonce requests recognised by their shape (``ocsp.nonced``) decode exactly as the strict decoder would, and
only when nothing but the nonce's own octets differ."""

from __future__ import annotations

import random
import tracemalloc

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from hypothesis import given, settings
from hypothesis import strategies as st

from ocsp import nonced
from ocsp.nonced import NonceShapes
from ocsp.request import Request, parse_request, parse_request_located
from tests import ocsp_requests as build

SERIAL = 0x1F2E3D4C5B6A79880112233445566778
NAME_HASH, KEY_HASH = bytes(range(20)), bytes(range(100, 120))
OTHER_EXTENSION = build.seq(build.tlv(0x06, bytes.fromhex("2b0601050507300104")),  # id-pkix-ocsp-response
                            build.tlv(0x04, build.seq(build.tlv(0x06, bytes.fromhex("2b0601050507300101")))))


def _request(nonce: bytes, serial: int = SERIAL, after: bool = False) -> bytes:
    cid = build.cert_id("sha1", NAME_HASH, KEY_HASH, serial)
    if not after:
        return build.request(cid, nonce=nonce)
    # the nonce first, another extension after it: the nonce does not end the request
    nonce_ext = build.seq(build.tlv(0x06, bytes.fromhex(build.NONCE_OID)), build.tlv(0x04, build.tlv(0x04, nonce)))
    tbs = build.seq(build.seq(cid)) + build.tlv(0xA2, build.seq(nonce_ext + OTHER_EXTENSION))
    return build.seq(build.seq(tbs))


def _shaped(shapes: NonceShapes, der: bytes) -> None:
    request, at = parse_request_located(der, 100)
    shapes.put(der, request, at)


@pytest.mark.parametrize("after", [False, True])
def test_the_nonce_is_located_where_its_octets_are(after: bool) -> None:
    nonce = bytes(range(1, 17))
    der = _request(nonce, after=after)
    request, at = parse_request_located(der)
    assert request.nonce == nonce and der[at:at + 16] == nonce
    assert parse_request_located(build.request(build.cert_id("sha1", NAME_HASH, KEY_HASH, SERIAL)))[1] == -1
    made = ocsp.OCSPRequestBuilder().add_certificate_by_hash(NAME_HASH, KEY_HASH, SERIAL, hashes.SHA1()) \
        .add_extension(x509.OCSPNonce(nonce), critical=False).build().public_bytes(serialization.Encoding.DER)
    request, at = parse_request_located(made)
    assert made[at:at + 16] == nonce == request.nonce


@settings(max_examples=200, deadline=None)
@given(first=st.binary(min_size=1, max_size=32), data=st.data(), after=st.booleans())
def test_a_request_of_a_known_shape_decodes_as_the_strict_decoder_does(first: bytes, data: st.DataObject,
                                                                       after: bool) -> None:
    shapes = NonceShapes()
    _shaped(shapes, _request(first, after=after))
    other = data.draw(st.binary(min_size=len(first), max_size=len(first)))
    der = _request(other, after=after)
    assert shapes.get(der) == parse_request(der, 100)


SIGNATURE = build.tlv(0xA0, build.seq(build.seq(build.tlv(0x06, bytes.fromhex("2a864886f70d01010b")), build.NULL),
                                       build.tlv(0x03, b"\x00" + bytes(range(16)))))
REQUESTOR = build.tlv(0xA4, build.seq(build.tlv(0x31, build.seq(build.tlv(0x06, b"\x55\x04\x03"),
                                                                 build.tlv(0x0C, b"requestor")))))
UNKNOWN_EXTENSION = build.seq(build.tlv(0x06, bytes.fromhex("2b0601050507300105")),
                              build.tlv(0x04, build.tlv(0x04, b"\x04\x02ab")))


@st.composite
def _varied(draw: st.DrawFn) -> bytes:
    """A strict-DER nonce request with what else a request may carry: several CertIDs of any hash, a
    requestorName, a signature, single-request extensions, other extensions before and after the nonce, a
    critical nonce, a nonce that reads as DER itself."""
    items = []
    for _ in range(draw(st.integers(1, 4))):
        hash_name = draw(st.sampled_from(sorted(build.DIGEST_SIZES)))
        size = build.DIGEST_SIZES[hash_name]
        cid = build.cert_id(hash_name, draw(st.binary(min_size=size, max_size=size)),
                            draw(st.binary(min_size=size, max_size=size)), draw(st.integers(0, 2**159)),
                            params=draw(st.sampled_from([build.NULL, None])))
        single = build.tlv(0xA0, build.seq(UNKNOWN_EXTENSION)) if draw(st.booleans()) else b""
        items.append(build.seq(cid + single))
    nonce = draw(st.one_of(st.binary(min_size=1, max_size=32),
                           st.binary(max_size=30).map(lambda inner: build.tlv(0x04, inner))))
    critical = b"\x01\x01\xff" if draw(st.booleans()) else b""
    extensions = [build.seq(build.tlv(0x06, bytes.fromhex(build.NONCE_OID)), critical,
                            build.tlv(0x04, build.tlv(0x04, nonce)))]
    for other in (OTHER_EXTENSION, UNKNOWN_EXTENSION):
        if draw(st.booleans()):
            extensions.insert(draw(st.integers(0, len(extensions))), other)
    tbs = ((build.tlv(0xA1, REQUESTOR) if draw(st.booleans()) else b"") + build.seq(*items)
           + build.tlv(0xA2, build.seq(*extensions)))
    return build.seq(build.seq(tbs), SIGNATURE if draw(st.booleans()) else b"")


@settings(max_examples=300, deadline=None)
@given(der=_varied(), data=st.data())
def test_any_request_taken_for_a_known_shape_is_what_the_strict_decoder_makes_of_it(der: bytes,
                                                                                  data: st.DataObject) -> None:
    shapes = NonceShapes()
    _shaped(shapes, der)
    request, at = parse_request_located(der, 100)
    assert request.nonce is not None and der[at:at + len(request.nonce)] == request.nonce
    for _ in range(20):  # other octets of the same length: at the nonce's place, or anywhere
        start = data.draw(st.sampled_from([at, data.draw(st.integers(0, len(der) - 1))]))
        octets = data.draw(st.binary(min_size=1, max_size=len(der) - start))
        changed = der[:start] + octets + der[start + len(octets):]
        found = shapes.get(changed)
        if start == at and len(octets) == len(request.nonce):
            assert found == parse_request(changed, 100) == Request(request.cert_ids, octets)
        elif found is not None:
            assert found == parse_request(changed, 100)


def test_anything_but_the_nonce_differing_is_decoded_again() -> None:
    shapes = NonceShapes()
    der = _request(b"n" * 16)
    _shaped(shapes, der)
    assert shapes.get(_request(b"m" * 16)) is not None
    assert shapes.get(_request(b"n" * 16, serial=SERIAL + 1)) is None  # same length, another serial
    assert shapes.get(_request(b"n" * 15)) is None  # another length
    rng = random.Random(15)
    at = parse_request_located(der)[1]
    for _ in range(200):  # one octet changed outside the nonce: never taken for the known shape
        i = rng.choice([i for i in range(len(der)) if not at <= i < at + 16])
        changed = der[:i] + bytes([der[i] ^ (1 << rng.randrange(8))]) + der[i + 1:]
        assert shapes.get(changed) is None


def test_a_request_without_a_nonce_has_no_shape() -> None:
    shapes = NonceShapes()
    der = build.request(build.cert_id("sha1", NAME_HASH, KEY_HASH, SERIAL))
    _shaped(shapes, der)
    assert shapes.get(der) is None


def test_what_traffic_fills_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    shapes = NonceShapes(capacity=20_000)
    for serial in range(1, 3000):  # shapes of one length: the LRU's bytes bound them
        _shaped(shapes, _request(b"n" * 16, serial=SERIAL + serial))
    assert len(shapes._shapes) < 20_000 // nonced.SHAPE_OVERHEAD
    for size in range(1, 33):  # layouts: at most LAYOUTS per length, at most LENGTHS lengths
        for pad in range(8):
            _shaped(shapes, _request(b"n" * size, serial=0x1234 << (8 * pad)))
    assert len(shapes._layouts) <= nonced.LENGTHS
    assert all(len(layouts) <= nonced.LAYOUTS for layouts in shapes._layouts.values())
    monkeypatch.setattr(nonced, "LENGTHS", 4)
    few = NonceShapes()
    for size in range(1, 10):
        _shaped(few, _request(b"x" * size))
    assert len(few._layouts) == 4 and few.get(_request(b"y" * 9)) is not None  # the newest kept


def _traced_against_charged(shapes_of: int, cert_ids: int, hash_name: str) -> tuple[int, int]:
    """(bytes tracemalloc sees held by ``shapes_of`` remembered shapes, bytes the LRU charged for them): each
    request ``cert_ids`` CertIDs of ``hash_name`` with 20-octet serials (the largest), decoded as
    ``from_cache`` does (its objects are the shape's once the request is answered)."""
    rng = random.Random(shapes_of * cert_ids)
    size = build.DIGEST_SIZES[hash_name]
    ders = [build.request(*(build.cert_id(hash_name, rng.randbytes(size), rng.randbytes(size),
                                          rng.getrandbits(159) | (1 << 158)) for _ in range(cert_ids)),
                          nonce=b"n" * 16) for _ in range(shapes_of)]
    shapes = NonceShapes(capacity=1 << 40)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for der in ders:
            _shaped(shapes, der)
        return tracemalloc.get_traced_memory()[0] - before, shapes._shapes.bytes
    finally:
        tracemalloc.stop()


def test_a_shape_is_charged_at_least_what_it_holds() -> None:
    # the CertIDs a shape keeps (objects of their own: hashes, serial) are charged too, not only its bytes:
    # a 100-CertID request's shape holds four times its length
    for shapes_of, cert_ids, hash_name in ((1000, 1, "sha1"), (5462, 1, "sha1"), (10923, 1, "sha512"),
                                           (300, 100, "sha1"), (200, 60, "sha512")):
        used, charged = _traced_against_charged(shapes_of, cert_ids, hash_name)
        assert used <= charged, (shapes_of, cert_ids, hash_name, used, charged)
