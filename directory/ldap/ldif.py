"""LDIF records (RFC 2849) of entries to add: what ``slapadd`` and ``ldapadd`` read.

A value (or DN) is written as text only when it is a SAFE-STRING: ASCII without NUL, CR or LF, not
starting with a space, ':' or '<', and not ending with a space (the RFC's SHOULD, which OpenLDAP's own
tools follow: a reader may strip it). Anything else (a name such as "Élodie", a certificate, a CRL) is
base64 (``name:: …``). Lines longer than 76 characters are folded: the rest continues on lines that
start with one space. No ``version:`` line: slapadd 2.5 reads the blank line after it as an entry
without a DN.

An export writes millions of values, most of them certificates folded into some twenty lines each: a
line of a length seen before is cut by one ``struct`` unpack (its pattern built once), not slice by slice.
"""

from __future__ import annotations

import binascii
import re
import struct
from collections.abc import Callable, Mapping, Sequence

WIDTH = 76
_UNSAFE = re.compile(rb"[\x00\n\r\x80-\xff]")
_UNSAFE_FIRST = frozenset(b" :<")
_CUTS: dict[int, Callable[[bytes], tuple[bytes, ...]]] = {}  # line length -> its folding cut
_CUTS_MAX = 4096  # lengths remembered (certificates come in a few dozen)
_CUT_LONGEST = 1 << 16  # longer lines (CRLs, large certificates) are cut by slicing
_PREFIXES: dict[str, tuple[bytes, bytes]] = {}  # attribute name -> (b"name: ", b"name:: ")


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
    """``text`` (longer than ``WIDTH``) as its first ``WIDTH`` bytes, then continuation lines."""
    cut = _CUTS.get(len(text))
    if cut is None:
        cut = _cut(len(text))
    return b"\n ".join(cut(text))


def _cut(length: int) -> Callable[[bytes], tuple[bytes, ...]]:
    step = WIDTH - 1
    if length > _CUT_LONGEST:
        return lambda text: (text[:WIDTH], *(text[i:i + step] for i in range(WIDTH, len(text), step)))
    full, rest = divmod(length - WIDTH, step)
    cut = struct.Struct(f"<{WIDTH}s" + f"{step}s" * full + (f"{rest}s" if rest else "")).unpack
    if len(_CUTS) < _CUTS_MAX:
        _CUTS[length] = cut
    return cut


def _prefixes(name: str) -> tuple[bytes, bytes]:
    raw = name.encode("ascii")
    prefixes = (raw + b": ", raw + b":: ")
    if len(_PREFIXES) < 1024:
        _PREFIXES[name] = prefixes
    return prefixes


def record(dn: str, attributes: Mapping[str, Sequence[bytes]]) -> bytes:
    """One entry: its DN, then every value of every attribute in order, then the blank line that ends it.
    Bytes throughout (values are never decoded; ``line`` inlined, names' prefixes kept)."""
    lines = [line("dn", dn.encode())]
    append, b64, unsafe, first, known = lines.append, binascii.b2a_base64, _UNSAFE.search, _UNSAFE_FIRST, _PREFIXES
    for name, values in attributes.items():
        plain, coded = known.get(name) or _prefixes(name)
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
