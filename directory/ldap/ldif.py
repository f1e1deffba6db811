"""LDIF records (RFC 2849) of entries to add: what ``slapadd`` and ``ldapadd`` read.

A value (or DN) is written as text only when it is a SAFE-STRING: ASCII without NUL, CR or LF, not
starting with a space, ':' or '<', and not ending with a space (the RFC's SHOULD, which OpenLDAP's own
tools follow: a reader may strip it). Anything else (a name such as "Élodie", a certificate, a CRL) is
base64 (``name:: …``). Lines longer than 76 characters are folded: the rest continues on lines that
start with one space. No ``version:`` line: slapadd 2.5 reads the blank line after it as an entry
without a DN.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence

WIDTH = 76
_UNSAFE = re.compile(rb"[\x00\n\r\x80-\xff]")


def safe(value: bytes) -> bool:
    """Whether ``value`` may be written as is (RFC 2849 SAFE-STRING, no trailing space)."""
    if not value:
        return True
    return value[0] not in b" :<" and value[-1] != 0x20 and _UNSAFE.search(value) is None


def line(name: str, value: bytes) -> str:
    """``name: value`` or ``name:: base64``, folded at ``WIDTH`` characters."""
    text = f"{name}: {value.decode('ascii')}" if safe(value) else f"{name}:: {base64.b64encode(value).decode('ascii')}"
    if len(text) <= WIDTH:
        return text
    step = WIDTH - 1
    return "\n ".join([text[:WIDTH], *(text[i:i + step] for i in range(WIDTH, len(text), step))])


def record(dn: str, attributes: Mapping[str, Sequence[bytes]]) -> str:
    """One entry: its DN, then every value of every attribute in order, then the blank line that ends it."""
    lines = [line("dn", dn.encode())]
    for name, values in attributes.items():
        lines += [line(name, v) for v in values]
    return "\n".join(lines) + "\n\n"


def comment(text: str) -> str:
    """Comment lines (``# …``); readers skip them."""
    return "".join(f"# {row}\n" for row in text.splitlines())
