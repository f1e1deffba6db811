"""Calling the admin API from tests: plain or TLS (with or without a client certificate), JSON answers
(problem details for errors)."""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any
from urllib.parse import urlsplit


def call(base: str, method: str, path: str, body: bytes | dict[str, Any] | None = None,
         token: str | None = None, context: ssl.SSLContext | None = None,
         content_type: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """(status, headers, decoded JSON or raw bytes) of one request."""
    url = urlsplit(base)
    conn: http.client.HTTPConnection
    if url.scheme == "https":
        conn = http.client.HTTPSConnection(url.hostname or "", url.port, context=context, timeout=15)
    else:
        conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=15)
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data: bytes | None = None
    if isinstance(body, dict):
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    elif body is not None:
        data = body
        headers["Content-Type"] = content_type or "application/octet-stream"
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    decoded: Any = raw
    if answer_headers.get("content-type", "").startswith(("application/json", "application/problem+json")):
        decoded = json.loads(raw)
    return response.status, answer_headers, decoded
