"""LDIF records (RFC 2849) of entries to add: what ``slapadd`` and ``ldapadd`` read.

A value (or DN) is written as text only when it is a SAFE-STRING: ASCII without NUL, CR or LF, not
starting with a space, ':' or '<', and not ending with a space (the RFC's SHOULD, which OpenLDAP's own
tools follow: a reader may strip it). Anything else (a name such as "Élodie", a certificate, a CRL) is
base64 (``name:: …``). Lines longer than 76 characters are folded: the rest continues on lines that
start with one space. No ``version:`` line: slapadd 2.5 reads the blank line after it as an entry
without a DN.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping, Sequence

WIDTH = 76
_UNSAFE = re.compile(rb"[\x00\n\r\x80-\xff]")
_UNSAFE_FIRST = frozenset(b" :<")


def safe(value: bytes) -> bool:
    """Whether ``value`` may be written as is (RFC 2849 SAFE-STRING, no trailing space)."""
    if not value:
        return True
    return value[0] not in _UNSAFE_FIRST and value[-1] != 0x20 and _UNSAFE.search(value) is None


def line(name: str, value: bytes) -> bytes:
    """``name: value`` or ``name:: base64``, folded at ``WIDTH`` characters."""
    if safe(value):
        text = b"%s: %s" % (name.encode("ascii"), value)
    else:
        text = b"%s:: %s" % (name.encode("ascii"), binascii.b2a_base64(value, newline=False))
    return text if len(text) <= WIDTH else _fold(text)


def _fold(text: bytes) -> bytes:
    step = WIDTH - 1
    return b"\n ".join([text[:WIDTH], *(text[i:i + step] for i in range(WIDTH, len(text), step))])


def record(dn: str, attributes: Mapping[str, Sequence[bytes]]) -> bytes:
    """One entry: its DN, then every value of every attribute in order, then the blank line that ends it.
    Bytes throughout (values are never decoded; ``line`` inlined): a large export writes millions."""
    lines = [line("dn", dn.encode())]
    append, b64, unsafe, first = lines.append, binascii.b2a_base64, _UNSAFE.search, _UNSAFE_FIRST
    for name, values in attributes.items():
        plain, coded = name.encode("ascii") + b": ", name.encode("ascii") + b":: "
        for value in values:
            if value and (value[0] in first or value[-1] == 0x20 or unsafe(value) is not None):
                text = coded + b64(value, newline=False)
            else:
                text = plain + value
            append(text if len(text) <= WIDTH else _fold(text))
    append(b"\n")
    return b"\n".join(lines)


def comment(text: str) -> str:
    """Comment lines (``# …``); readers skip them."""
    return "".join(f"# {row}\n" for row in text.splitlines())
