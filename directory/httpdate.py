"""HTTP dates (RFC 9110 IMF-fixdate) for Last-Modified / Expires, cached: the same few timestamps repeat."""

from __future__ import annotations

import functools
from email.utils import formatdate


@functools.lru_cache(maxsize=65536)
def http_date(ts: int) -> str:
    return formatdate(int(ts), usegmt=True)
