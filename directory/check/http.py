"""A small blocking HTTP/1.1 client for the checker: one keep-alive connection, bounded bytes and seconds.

The checker reaches the service the way a relying party does, over its public listener. It runs on a
thread of its own, so a blocking client is the simplest correct one; the connection is closed at the
end of every cycle, so the checker never holds a slot of the listener's connection cap between cycles.
"""

from __future__ import annotations

import http.client
import ssl
import time
from urllib.parse import urlsplit

MAX_BODY = 512 * 1024 * 1024  # a CRL of a few million entries; anything larger is refused


class HttpTrouble(Exception):
    """No answer: connection refused or broken, timeout, oversized body. Not a statement about a status."""


class HttpClient:
    def __init__(self, base_url: str, timeout: float = 10.0, max_body: int = MAX_BODY) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.prefix = parts.path.rstrip("/")
        self.host, self.port, self.tls = parts.hostname, parts.port, parts.scheme == "https"
        self.timeout = timeout
        self.max_body = max_body
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.tls:
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                         context=ssl.create_default_context())
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body). A kept-alive connection the server closed is retried once."""
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._connection()
            deadline = time.monotonic() + self.timeout * 3
            try:
                conn.request(method, self.prefix + path, body=body, headers=headers or {})
                response = conn.getresponse()
                length = response.getheader("Content-Length")
                if length is not None and length.isdigit() and int(length) > self.max_body:
                    raise HttpTrouble(f"{path}: {length} bytes announced, more than {self.max_body}")
                chunks, size = [], 0
                while chunk := response.read(1 << 20):
                    size += len(chunk)
                    if size > self.max_body or time.monotonic() > deadline:
                        raise HttpTrouble(f"{path}: body too large or too slow")
                    chunks.append(chunk)
                answer_headers = {k.lower(): v for k, v in response.getheaders()}
                if answer_headers.get("connection", "").lower() == "close":
                    self.close()
                return response.status, answer_headers, b"".join(chunks)
            except HttpTrouble:
                self.close()
                raise
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # the server closed an idle kept-alive connection: once more on a new one
                raise HttpTrouble(f"{method} {path}: {type(exc).__name__}: {exc}") from None
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                self.close()
                raise HttpTrouble(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        raise HttpTrouble(f"{method} {path}: no answer")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
