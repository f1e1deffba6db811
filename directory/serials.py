"""Certificate serial numbers: one reading rule for every input, stored losslessly as canonical hex.

Serials are hexadecimal everywhere, as ``openssl``, the demo manifest and the registry print them:
``1001``, ``0x1001`` and ``10:01`` are all 0x1001. A decimal number needs the explicit ``dec:`` marker
(``dec:4097``), which nobody types by accident. Only ASCII is read (no Unicode digits), nothing is
stripped (a trailing newline is an error, not a typo forgiven), and the text is bounded before any
conversion. The CLI, the admin API (bodies and paths) and the importer all call :func:`parse`.

A serial is a positive INTEGER of at most 20 octets (RFC 5280 §4.1.2.2), larger than SQLite's
64-bit integers, so the registry keys on lower-case hex without leading zeros.
"""

from __future__ import annotations

import re
from collections.abc import Callable

MAX_SERIAL_OCTETS = 20
DECIMAL_MARKER = "dec:"
MAX_TEXT = 80  # characters: the longest spelling of 20 octets (colon form) is 59
_HEX = re.compile(r"[0-9a-fA-F]+", re.ASCII)
_COLON = re.compile(r"[0-9a-fA-F]{1,2}(?::[0-9a-fA-F]{1,2})+", re.ASCII)
_DECIMAL = re.compile(r"[0-9]+", re.ASCII)
SPELLINGS = "hex: 1A2B, 0x1A2B or 1A:2B; decimal only as dec:6699"


class SerialError(ValueError):
    """An operator-supplied serial that cannot be read."""


def to_hex(serial: int) -> str:
    """Canonical registry form of a serial: lower-case hex, no leading zeros, no prefix."""
    if serial < 0:
        raise SerialError("serial numbers are positive integers")
    return format(serial, "x")


def parse(text: str) -> int:
    """The serial ``text`` names: hex (``1a2b``, ``0x1A2B``, ``1A:2B``) or ``dec:6699``."""
    if not text:
        raise SerialError("empty serial")
    if len(text) > MAX_TEXT:
        raise SerialError(f"serial text longer than {MAX_TEXT} characters")
    if not text.isascii() or not text.isprintable():
        raise SerialError(f"bad serial {text!r}: ASCII letters and digits only ({SPELLINGS})")
    if text[:len(DECIMAL_MARKER)].lower() == DECIMAL_MARKER:
        digits = text[len(DECIMAL_MARKER):]
        if not _DECIMAL.fullmatch(digits):
            raise SerialError(f"bad decimal serial {text!r} (dec: then digits 0-9)")
        value = int(digits.lstrip("0") or "0", 10)  # at most MAX_TEXT digits: far below int()'s limit
    elif text[:2].lower() == "0x":
        value = _hex_value(text[2:], text)
    elif ":" in text:
        if not _COLON.fullmatch(text):
            raise SerialError(f"bad colon-separated hex serial {text!r} (like 1A:2B)")
        value = int("".join(part.zfill(2) for part in text.split(":")), 16)
    else:
        value = _hex_value(text, text)
    check(value)
    return value


def decimal_reading(text: str) -> int | None:
    """What an all-digit ``text`` means read as decimal, as someone copying a decimal tool's output
    meant it (None when it is not all digits, or out of range): an error about the hex reading can then
    name that other certificate."""
    if not (text.isascii() and text.isdigit() and len(text) <= 49):
        return None
    value = int(text, 10)
    try:
        check(value)
    except SerialError:
        return None
    return value if value != int(text, 16) else None


def canonical(text: str) -> str:
    """The registry's key for a serial as typed: :func:`parse`, then :func:`to_hex`."""
    return to_hex(parse(text))


def explain_unknown(issuer: str, text: str, serial_hex: str, holds: Callable[[str], bool], ask: str) -> str:
    """Why no certificate of ``issuer`` matched the serial typed as ``text`` (read as ``serial_hex``). An
    all-digit ``text`` may have been meant as a decimal: the message says whether the issuer ``holds`` that
    other serial (by its hex key) and how to ``ask`` for it (the CLI: ``write --serial``, the API: ``send``)."""
    message = f"issuer {issuer} has no certificate with serial 0x{serial_hex} (serials are hex)"
    other = decimal_reading(text)
    if other is None:
        return message
    if holds(to_hex(other)):
        return message + (f"; it does hold 0x{to_hex(other)}, which is decimal {text}: if you meant that one, "
                          f"{ask} dec:{text}")
    return message + f"; if {text} was meant as decimal, {ask} dec:{text}"


def check(value: int) -> None:
    if value < 0:
        raise SerialError("serial numbers are positive integers")
    if (value.bit_length() + 7) // 8 > MAX_SERIAL_OCTETS:
        raise SerialError(f"serial longer than {MAX_SERIAL_OCTETS} octets")


def _hex_value(digits: str, original: str) -> int:
    if not _HEX.fullmatch(digits):
        raise SerialError(f"bad serial {original!r} ({SPELLINGS})")
    return int(digits, 16)


def colon_hex(serial: int) -> str:
    """Display form used by openssl: ``1A:2B:3C``."""
    text = format(serial, "x")
    if len(text) % 2:
        text = "0" + text
    return ":".join(text[i:i + 2] for i in range(0, len(text), 2)).upper()
