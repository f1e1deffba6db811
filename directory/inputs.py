"""Strict, bounded readers for operator input shared by the CLI and the admin API: times and JSON bodies.

Every reader refuses with ``InputError`` (a ``ValueError``) naming what is wrong; none lets a stray
exception through (``OverflowError``, ``RecursionError``, the int-conversion limit): a bad input is the
caller's error, never an HTTP 500 or a traceback.

Times are RFC 3339 ``date-time`` only (``2026-11-28T10:00:00Z``, ``...+01:00``, optional fractions, which
are dropped): no ISO 8601 week or ordinal dates, no basic format, ASCII digits only. The instant must lie
between ``MIN_TIME`` and ``MAX_TIME``, the range RFC 5280's UTCTime/GeneralizedTime rules encode
unambiguously (before 1950 a UTCTime would be read a century later).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any, overload

MIN_TIME = int(datetime(1950, 1, 1, tzinfo=UTC).timestamp())
MAX_TIME = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())
MAX_JSON_DEPTH = 32
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII)
_RFC3339_LOCAL = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?", re.ASCII)


class InputError(ValueError):
    """Operator input that cannot be read; the message says why."""


def parse_time(text: str, *, assume_utc: bool = False) -> int:
    """Epoch seconds of an RFC 3339 date-time. ``assume_utc``: a missing offset means UTC (the CLI's
    documented convenience); otherwise an offset (``Z`` or ``±hh:mm``) is required."""
    if len(text) > 40:
        raise InputError(f"not an RFC 3339 time: {text[:40]!r}...")
    match = _RFC3339.fullmatch(text)
    if match is None and assume_utc and _RFC3339_LOCAL.fullmatch(text):
        match = _RFC3339.fullmatch(text + "Z")
    if match is None:
        raise InputError(f"not an RFC 3339 time (like 2026-11-28T10:00:00Z or 2026-11-28T11:00:00+01:00): {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if second == 60:
        raise InputError(f"{text!r}: leap seconds cannot be represented; use :59")
    if match.group(8) is None:
        offset = timedelta(0)
    else:
        off_h, off_m = int(match.group(9)), int(match.group(10))
        if off_h > 23 or off_m > 59:
            raise InputError(f"{text!r}: the offset must be between -23:59 and +23:59")
        offset = timedelta(hours=off_h, minutes=off_m) * (-1 if match.group(8) == "-" else 1)
    try:
        local = datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise InputError(f"{text!r}: {exc}") from None
    # UTC = local time - offset, computed on naive values: no datetime arithmetic can overflow below
    seconds = int((local - datetime(1970, 1, 1)).total_seconds()) - int(offset.total_seconds())
    if not MIN_TIME <= seconds <= MAX_TIME:
        raise InputError(f"{text!r} is outside 1950-01-01 .. 9999-12-31 (UTC)")
    return seconds


@overload
def format_time(ts: float) -> str: ...


@overload
def format_time(ts: None) -> None: ...


def format_time(ts: float | None) -> str | None:
    """RFC 3339 UTC form of epoch seconds, to the second (what the API answers and the CLI prints); None
    stays None (a time not set)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_json(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A JSON document of at most ``max_depth`` nested arrays/objects (checked before parsing, in one pass,
    so a deeply nested body costs no recursion), in UTF-8."""
    depth = nesting_depth(body, max_depth)
    if depth > max_depth:
        raise InputError(f"JSON nested more than {max_depth} levels deep")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except (ValueError, RecursionError) as exc:  # ValueError includes JSONDecodeError and huge integers
        raise InputError(f"the body is not JSON: {exc}") from None


_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[{]|[\]}]', re.DOTALL)


def nesting_depth(body: bytes, stop_above: int = MAX_JSON_DEPTH) -> int:
    """Deepest nesting of ``[``/``{`` outside strings, or the first depth above ``stop_above`` (linear: a
    regex skips strings, Python only sees brackets)."""
    depth = deepest = 0
    for token in _TOKENS.finditer(body):
        first = token.group()[0]
        if first in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_above:
                    break
        elif first in b"]}":
            depth -= 1
    return deepest
