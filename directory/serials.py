"""Certificate serial numbers: parsed from operators' spellings, stored losslessly as canonical hex.

A serial is a positive INTEGER of at most 20 octets (RFC 5280 §4.1.2.2), larger than SQLite's
64-bit integers, so the registry keys on lower-case hex without leading zeros.
"""

from __future__ import annotations

import re

MAX_SERIAL_OCTETS = 20
_HEX = re.compile(r"^[0-9a-fA-F]+$")


class SerialError(ValueError):
    """An operator-supplied serial that cannot be read."""


def to_hex(serial: int) -> str:
    """Canonical registry form of a serial: lower-case hex, no leading zeros, no prefix."""
    if serial < 0:
        raise SerialError("serial numbers are positive integers")
    return format(serial, "x")


def from_hex(text: str) -> int:
    return int(text, 16)


def parse(text: str) -> int:
    """Accept ``0x1f2e``, ``1F:2E``, ``1f2e`` (hex when it has a-f or colons) and decimal ``7982``.

    A bare run of decimal digits is read as decimal; prefix it with ``0x`` to force hex.
    """
    raw = text.strip()
    if not raw:
        raise SerialError("empty serial")
    if raw.lower().startswith("0x"):
        digits = raw[2:].replace(":", "")
        value = _hex_value(digits, text)
    elif ":" in raw:
        parts = raw.split(":")
        if not all(1 <= len(p) <= 2 and _HEX.match(p) for p in parts):
            raise SerialError(f"bad colon-separated hex serial {text!r}")
        value = int("".join(p.zfill(2) for p in parts), 16)
    elif raw.isdigit():
        value = int(raw, 10)
    else:
        value = _hex_value(raw, text)
    check(value)
    return value


def check(value: int) -> None:
    if value < 0:
        raise SerialError("serial numbers are positive integers")
    if (value.bit_length() + 7) // 8 > MAX_SERIAL_OCTETS:
        raise SerialError(f"serial longer than {MAX_SERIAL_OCTETS} octets")


def _hex_value(digits: str, original: str) -> int:
    if not digits or not _HEX.match(digits):
        raise SerialError(f"bad serial {original!r} (hex: 0x1A2B or 1A:2B, decimal: 6699)")
    return int(digits, 16)


def colon_hex(serial: int) -> str:
    """Display form used by openssl: ``1A:2B:3C``."""
    text = format(serial, "x")
    if len(text) % 2:
        text = "0" + text
    return ":".join(text[i:i + 2] for i in range(0, len(text), 2)).upper()
