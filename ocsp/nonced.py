"""Nonce requests recognised by everything but their nonce: the strict decode made once per request shape.

A client asking with a nonce sends the same bytes each time but for the nonce's own octets (RFC 8954: the
contents of an OCTET STRING inside the extension's value). Those octets are the contents of a primitive
OCTET STRING, where DER allows any value: a request that is byte for byte one that decoded strictly, but for
other octets of the same length at that place, decodes strictly to the same values with that nonce. So its
decode is not made again (a tenth of a live answer's event-loop time): the values found then are taken, with
the new nonce.

Bounded: shapes live in an LRU bounded in bytes; a request's length names at most ``LAYOUTS`` places of a
nonce to try, and at most ``LENGTHS`` lengths are remembered (what traffic fills cannot grow without bound;
a request matching no shape is decoded as always).
"""

from __future__ import annotations

from ocsp.lru import ByteLru
from ocsp.request import CertId, Request

SHAPES = 1024 * 1024  # bytes of remembered request shapes
SHAPE_OVERHEAD = 400  # per shape besides its bytes: dict slot, LRU links, key and value tuples
# per CertID a shape keeps: its object, two hashes and a serial of its own (up to SHA-512 and 20 octets), beyond
# their bytes in the shape; tests/test_ocsp_nonced.py measures both charges as upper bounds
CERT_ID_COST = 384
LAYOUTS = 4  # (nonce offset, nonce length) tried per request length
LENGTHS = 256


class NonceShapes:
    """``get(der)``: the request ``der`` decodes to when it has the shape of one seen before (``put``), else None."""

    def __init__(self, capacity: int = SHAPES) -> None:
        # (nonce offset, nonce length, the request without its nonce) -> its CertIDs
        self._shapes: ByteLru[tuple[int, int, bytes], tuple[CertId, ...]] = ByteLru(capacity, SHAPE_OVERHEAD)
        self._layouts: dict[int, list[tuple[int, int]]] = {}  # request length -> places of a nonce

    def get(self, der: bytes) -> Request | None:
        layouts = self._layouts.get(len(der))
        if layouts is None:
            return None
        for at, size in layouts:
            end = at + size
            cert_ids = self._shapes.get((at, size, der[:at] + der[end:]))
            if cert_ids is not None:
                return Request(cert_ids, der[at:end])
        return None

    def put(self, der: bytes, request: Request, nonce_at: int) -> None:
        """Remember the shape of ``der``, which decoded strictly to ``request`` with its nonce at ``nonce_at``."""
        nonce = request.nonce
        if nonce is None or nonce_at < 0:
            return
        size = len(nonce)
        assert der[nonce_at:nonce_at + size] == nonce
        layouts = self._layouts.get(len(der))
        if layouts is None:
            if len(self._layouts) >= LENGTHS:
                del self._layouts[next(iter(self._layouts))]  # the oldest length
            layouts = self._layouts[len(der)] = []
        if (nonce_at, size) not in layouts:
            if len(layouts) >= LAYOUTS:
                layouts.pop(0)
            layouts.append((nonce_at, size))
        rest = der[:nonce_at] + der[nonce_at + size:]
        cost = len(rest) + CERT_ID_COST * len(request.cert_ids)
        self._shapes.put((nonce_at, size, rest), request.cert_ids, cost)
