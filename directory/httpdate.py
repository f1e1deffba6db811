"""HTTP dates (RFC 9110 §5.6.7): IMF-fixdate for Last-Modified / Expires, and a strict reader for the
conditional headers.

The reader accepts the three forms RFC 9110 requires of a recipient (IMF-fixdate, the obsolete RFC 850
and asctime forms), ASCII only, bounded; anything else is None, which RFC 9110 says to treat as if the
header were absent (never an error, never an exception).
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from email.utils import formatdate

_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                                        "Dec"), start=1)}
_MONTH = r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF = re.compile(rf"{_DAY}, ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} GMT", re.ASCII)
_RFC850 = re.compile(rf"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), ([0-9]{{2}})-{_MONTH}-"
                     rf"([0-9]{{2}}) {_TIME} GMT", re.ASCII)
_ASCTIME = re.compile(rf"{_DAY} {_MONTH} ([0-9 ][0-9]) {_TIME} ([0-9]{{4}})", re.ASCII)


@functools.lru_cache(maxsize=65536)
def http_date(ts: int) -> str:
    return formatdate(int(ts), usegmt=True)


def parse_http_date(text: str, now: float | None = None) -> int | None:
    """Epoch seconds of an HTTP-date, or None when ``text`` is not one."""
    text = text.strip(" \t")
    if len(text) > 40:
        return None
    if match := _IMF.fullmatch(text):
        day, month, year, hh, mm, ss = match.groups()
    elif match := _ASCTIME.fullmatch(text):
        month, day, hh, mm, ss, year = match.groups()
    elif match := _RFC850.fullmatch(text):
        day, month, yy, hh, mm, ss = match.groups()
        year = str(_century(int(yy), now))
    else:
        return None
    y, m, d, hour, minute, second = int(year), _MONTHS[month], int(day.strip()), int(hh), int(mm), int(ss)
    if y < 1 or not 1 <= d <= calendar.monthrange(y, m)[1] or hour > 23 or minute > 59 or second > 60:
        return None
    return calendar.timegm((y, m, d, hour, minute, min(second, 59)))


def _century(yy: int, now: float | None) -> int:
    """RFC 9110: a two-digit year more than 50 years in the future is in the past century."""
    current = time.gmtime(now).tm_year
    year = current - current % 100 + yy
    return year - 100 if year > current + 50 else year
