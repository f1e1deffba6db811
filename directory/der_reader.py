"""A strict DER reader for what arrives from the network: one canonical encoding per value, or an error.

DER gives every value exactly one encoding. Accepting only that encoding means two requests that mean
the same thing are the same bytes, and nothing a client chose (padding, length forms, junk where a
NULL goes) can be carried along. Refused here: indefinite and non-minimal lengths, high tag numbers,
constructed strings, non-minimal INTEGERs and OID arcs, BOOLEANs other than 00/FF, non-empty NULLs,
BIT STRINGs with unused bits set, SET OF elements out of order, and bytes after the end.
"""

from __future__ import annotations

from directory.der import BIT_STRING, BOOLEAN, ENUMERATED, INTEGER, NULL, OCTET_STRING, OID, SEQUENCE, SET

_MAX_LENGTH_OCTETS = 3  # 16 MiB: far beyond any request we take (the HTTP layer caps bodies at 10 KiB)
MAX_DEPTH = 24  # nesting checked by ``any``: certificates and names need about ten
_CONSTRUCTED = 0x20



class DerError(ValueError):
    """Not DER, or not the structure expected; the message says what and where."""


class Reader:
    """Consecutive TLVs of ``data[pos:end]``, read front to back."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    def at_end(self) -> bool:
        return self.pos >= self.end

    def peek(self) -> int | None:
        """The next tag, or None at the end."""
        return None if self.pos >= self.end else self.data[self.pos]

    def done(self, what: str) -> None:
        if self.pos != self.end:
            raise DerError(f"{self.end - self.pos} unexpected octets after {what} (offset {self.pos})")

    def _header(self) -> tuple[int, int, int]:
        """(tag, contents start, contents end) of the next TLV; moves past it."""
        data, pos, end = self.data, self.pos, self.end
        if pos + 2 > end:
            raise DerError(f"truncated TLV at offset {pos}")
        tag, first = data[pos], data[pos + 1]
        if tag & 0x1F == 0x1F:
            raise DerError(f"high tag number at offset {pos}")
        pos += 2
        if first < 0x80:
            length = first
        elif first == 0x80:
            raise DerError(f"indefinite length at offset {pos - 2}")
        else:
            n = first & 0x7F
            if n > _MAX_LENGTH_OCTETS or pos + n > end:
                raise DerError(f"impossible length at offset {pos - 2}")
            length = int.from_bytes(data[pos:pos + n], "big")
            if data[pos] == 0 or length < 0x80:
                raise DerError(f"non-minimal length at offset {pos - 2}")
            pos += n
        if pos + length > end:
            raise DerError(f"length past the end of its container at offset {self.pos}")
        self.pos = pos + length
        return tag, pos, pos + length

    def _expect(self, tag: int, what: str) -> tuple[int, int]:
        found = self.peek()
        if found != tag:
            shown = "the end" if found is None else f"tag 0x{found:02x}"
            raise DerError(f"expected {what} (tag 0x{tag:02x}) at offset {self.pos}, found {shown}")
        _, start, end = self._header()
        return start, end

    # -- constructed ---------------------------------------------------------------------------
    def enter(self, tag: int, what: str) -> Reader:
        """The contents of a constructed TLV (SEQUENCE, [n] EXPLICIT ...), as a reader of their own."""
        start, end = self._expect(tag, what)
        return Reader(self.data, start, end)

    def enter_optional(self, tag: int, what: str) -> Reader | None:
        return self.enter(tag, what) if self.peek() == tag else None

    # -- primitives ----------------------------------------------------------------------------
    def integer(self, what: str = "INTEGER") -> int:
        start, end = self._expect(INTEGER, what)
        _check_integer(self.data, start, end, what)
        return int.from_bytes(self.data[start:end], "big", signed=True)

    def boolean(self, what: str = "BOOLEAN") -> bool:
        start, end = self._expect(BOOLEAN, what)
        _check_boolean(self.data, start, end, what)
        return self.data[start] == 0xFF

    def null(self, what: str = "NULL") -> None:
        start, end = self._expect(NULL, what)
        if end != start:
            raise DerError(f"{what}: NULL with contents at offset {start}")

    def oid(self, what: str = "OBJECT IDENTIFIER") -> bytes:
        """The OID's contents octets (compare with known OIDs' encodings; no need to spell them)."""
        start, end = self._expect(OID, what)
        _check_oid(self.data, start, end, what)
        return self.data[start:end]

    def octet_string(self, what: str = "OCTET STRING") -> bytes:
        start, end = self._expect(OCTET_STRING, what)
        return self.data[start:end]

    def any(self, what: str) -> bytes:
        """One whole TLV of any type, checked to be DER all the way down; its encoding is returned."""
        first = self.pos
        self._check_tlv(what, MAX_DEPTH)
        return self.data[first:self.pos]

    def _check_tlv(self, what: str, depth: int) -> None:
        if depth == 0:
            raise DerError(f"{what}: nested more than {MAX_DEPTH} levels deep at offset {self.pos}")
        tag, start, end = self._header()
        data = self.data
        if tag == 0:
            raise DerError(f"{what}: end-of-contents octets (BER only) at offset {start - 2}")
        if tag & _CONSTRUCTED:
            if tag < 0x40 and tag not in (SEQUENCE, SET):  # universal strings are primitive in DER
                raise DerError(f"{what}: constructed encoding of universal type {tag & 0x1F} at offset {start}")
            inner = Reader(data, start, end)
            previous = None
            while not inner.at_end():
                element_start = inner.pos
                inner._check_tlv(what, depth - 1)
                if tag == SET:  # DER: SET OF elements in ascending order of their encodings
                    element = data[element_start:inner.pos]
                    if previous is not None and element < previous:
                        raise DerError(f"{what}: SET OF out of order at offset {element_start}")
                    previous = element
            return
        if tag | _CONSTRUCTED in (SEQUENCE, SET):
            raise DerError(f"{what}: primitive SEQUENCE/SET at offset {start}")
        if tag in (INTEGER, ENUMERATED):
            _check_integer(data, start, end, what)
        elif tag == BOOLEAN:
            _check_boolean(data, start, end, what)
        elif tag == NULL and end != start:
            raise DerError(f"{what}: NULL with contents at offset {start}")
        elif tag == OID:
            _check_oid(data, start, end, what)
        elif tag == BIT_STRING:
            _check_bit_string(data, start, end, what)


def _check_integer(data: bytes, start: int, end: int, what: str) -> None:
    if end == start:
        raise DerError(f"{what}: empty INTEGER at offset {start}")
    if end - start > 1 and ((data[start] == 0 and data[start + 1] < 0x80)
                            or (data[start] == 0xFF and data[start + 1] >= 0x80)):
        raise DerError(f"{what}: non-minimal INTEGER at offset {start}")


def _check_boolean(data: bytes, start: int, end: int, what: str) -> None:
    if end - start != 1 or data[start] not in (0x00, 0xFF):
        raise DerError(f"{what}: BOOLEAN other than 00 or FF at offset {start}")


def _check_oid(data: bytes, start: int, end: int, what: str) -> None:
    if end == start or data[end - 1] & 0x80:
        raise DerError(f"{what}: truncated OBJECT IDENTIFIER at offset {start}")
    arc_start = True
    for i in range(start, end):
        if arc_start and data[i] == 0x80:
            raise DerError(f"{what}: non-minimal OBJECT IDENTIFIER arc at offset {i}")
        arc_start = not data[i] & 0x80


def _check_bit_string(data: bytes, start: int, end: int, what: str) -> None:
    if end == start:
        raise DerError(f"{what}: empty BIT STRING at offset {start}")
    unused = data[start]
    if unused > 7 or (end - start == 1 and unused) or (unused and data[end - 1] & ((1 << unused) - 1)):
        raise DerError(f"{what}: BIT STRING with bad unused bits at offset {start}")
