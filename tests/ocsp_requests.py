"""OCSP requests built by hand, canonical or with one chosen DER accident: what an attacker sends.

Independent of the code under test (no import from ``ocsp``): a small TLV tree that serialises each node
canonically unless told otherwise, so a test can say "this request, but with the serial padded".
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

HASH_OIDS = {"sha1": "2b0e03021a", "sha256": "608648016503040201", "sha384": "608648016503040202",
             "sha512": "608648016503040203"}
DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
NONCE_OID = "2b0601050507300102"
NULL = b"\x05\x00"


def length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + length(len(body)) + body


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def integer(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)
    while len(body) > 1 and ((body[0] == 0 and body[1] < 0x80) or (body[0] == 0xFF and body[1] >= 0x80)):
        body = body[1:]
    return tlv(0x02, body)


def cert_id(hash_name: str, name_hash: bytes, key_hash: bytes, serial: int, *, params: bytes | None = NULL,
            serial_der: bytes | None = None) -> bytes:
    """A CertID; ``params`` is what follows the hash OID (None: absent), ``serial_der`` replaces the INTEGER."""
    algorithm = seq(tlv(0x06, bytes.fromhex(HASH_OIDS[hash_name])), params or b"")
    return seq(algorithm, tlv(0x04, name_hash), tlv(0x04, key_hash), serial_der or integer(serial))


def request(*cert_ids: bytes, nonce: bytes | None = None, nonce_critical: bool = False,
            extensions: bytes = b"", requestor: bytes = b"") -> bytes:
    """An OCSPRequest; ``requestor``: a GeneralName, sent as requestorName."""
    exts = extensions
    if nonce is not None:
        critical = b"\x01\x01\xff" if nonce_critical else b""
        exts += seq(tlv(0x06, bytes.fromhex(NONCE_OID)), critical, tlv(0x04, tlv(0x04, nonce)))
    tbs = (tlv(0xA1, requestor) if requestor else b"") + seq(*(seq(c) for c in cert_ids))
    tbs += tlv(0xA2, seq(exts)) if exts else b""
    return seq(seq(tbs))


def non_minimal_serial(serial: int) -> bytes:
    """The serial INTEGER with one superfluous leading 00 (``02 11 00 <16 octets>`` for a 16-octet serial)."""
    minimal = integer(serial)[2:]
    return tlv(0x02, b"\x00" + minimal)


POISON_PARAMS = tlv(0x04, b"POISONED-BY-ATTACKER")


# -- a TLV tree, for accidents anywhere ---------------------------------------------------------
@dataclass
class Node:
    tag: int
    body: bytes = b""  # primitive contents
    children: list[Node] = field(default_factory=list)
    length_form: str = "canonical"  # canonical | long (one octet more than needed) | padded | indefinite
    pad_integer: bool = False

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)

    def encode(self) -> bytes:
        body = b"".join(c.encode() for c in self.children) if self.constructed else self.body
        if self.pad_integer:
            body = (b"\xff" if body and body[0] & 0x80 else b"\x00") + body
        if self.length_form == "indefinite":
            return bytes((self.tag, 0x80)) + body + b"\x00\x00"
        n = len(body)
        octets = n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")
        if self.length_form == "long" and n < 0x80:  # long form where the short one fits
            return bytes((self.tag, 0x81, n)) + body
        if self.length_form in ("long", "padded"):  # a leading zero length octet
            return bytes((self.tag, 0x80 | (len(octets) + 1), 0)) + octets + body
        return tlv(self.tag, body)

    def walk(self) -> list[Node]:
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out


def parse_tree(der: bytes) -> Node:
    """A canonical DER value as a tree (the inputs are our own canonical requests)."""
    node, end = _parse(der, 0)
    assert end == len(der)
    return node


def _parse(data: bytes, pos: int) -> tuple[Node, int]:
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first & 0x80:
        n = first & 0x7F
        size = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    else:
        size = first
    end = pos + size
    if tag & 0x20:
        node, children = Node(tag), []
        while pos < end:
            child, pos = _parse(data, pos)
            children.append(child)
        node.children = children
        return node, end
    return Node(tag, data[pos:end]), end


ACCIDENTS = ("long length", "padded length", "indefinite length", "padded integer", "bad boolean",
             "junk parameters", "parameters with contents", "short hash", "long hash", "version v1 encoded",
             "trailing bytes", "trailing element", "constructed octet string", "high tag number",
             "critical false encoded", "empty integer", "duplicate nonce")


def with_accident(der: bytes, accident: str, rng: random.Random) -> bytes | None:
    """``der`` (canonical) with one DER accident somewhere it applies; None when nothing applies."""
    tree = parse_tree(der)
    nodes = tree.walk()
    if accident == "long length":
        rng.choice(nodes).length_form = "long"
    elif accident == "padded length":
        rng.choice(nodes).length_form = "padded"
    elif accident == "indefinite length":
        rng.choice([n for n in nodes if n.constructed]).length_form = "indefinite"
    elif accident == "padded integer":
        rng.choice([n for n in nodes if n.tag == 0x02]).pad_integer = True
    elif accident == "empty integer":
        rng.choice([n for n in nodes if n.tag == 0x02]).body = b""
    elif accident == "bad boolean":
        booleans = [n for n in nodes if n.tag == 0x01]
        if not booleans:
            return None
        rng.choice(booleans).body = bytes((rng.randint(1, 0xFE),))
    elif accident in ("junk parameters", "parameters with contents"):
        algorithms = [n for n in nodes if n.tag == 0x30 and n.children and n.children[0].tag == 0x06
                      and n.children[0].body.hex() in HASH_OIDS.values()]
        algorithm = rng.choice(algorithms)
        junk = Node(0x04, b"POISONED-BY-ATTACKER") if accident == "junk parameters" else Node(0x05, b"\x00")
        algorithm.children[1:] = [junk]
    elif accident in ("short hash", "long hash"):
        hashes = [n for n in nodes if n.tag == 0x04 and len(n.body) in DIGEST_SIZES.values()]
        target = rng.choice(hashes)
        target.body = target.body[:-1] if accident == "short hash" else target.body + b"\x00"
    elif accident == "version v1 encoded":
        tree.children[0].children.insert(0, Node(0xA0, children=[Node(0x02, b"\x00")]))
    elif accident == "trailing bytes":
        return tree.encode() + bytes((rng.randrange(256),))
    elif accident == "trailing element":
        rng.choice([n for n in nodes if n.tag == 0x30]).children.append(Node(0x02, b"\x00"))
    elif accident == "constructed octet string":
        strings = [n for n in nodes if n.tag == 0x04 and len(n.body) > 1]
        target = rng.choice(strings)
        half = len(target.body) // 2
        target.tag, target.children = 0x24, [Node(0x04, target.body[:half]), Node(0x04, target.body[half:])]
    elif accident == "high tag number":
        contents = b"".join(c.encode() for c in tree.children)
        return tlv(0x30, contents + b"\x9f\x21\x00")  # [33] needs the high tag number form
    elif accident == "critical false encoded":
        extensions = [n for n in nodes if n.tag == 0x30 and len(n.children) == 2 and n.children[0].tag == 0x06
                      and n.children[1].tag == 0x04]
        if not extensions:
            return None
        rng.choice(extensions).children.insert(1, Node(0x01, b"\x00"))
    elif accident == "duplicate nonce":
        extensions = [n for n in nodes if n.tag == 0x30 and n.children and n.children[0].tag == 0x06
                      and n.children[0].body.hex() == NONCE_OID]
        if not extensions:
            return None
        parent = next(n for n in nodes if extensions[0] in n.children)
        parent.children.append(extensions[0])
    else:
        raise ValueError(accident)
    return tree.encode()

