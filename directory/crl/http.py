"""Serving published CRLs and CA certificates over HTTP with correct caching semantics.

Readers get the last published bytes from memory: a build in progress never makes them wait, and a file
replaced on disk by another process (``annuaire crl build``) is noticed by a ``stat`` and reloaded. Only
names that match a strict pattern and are in the published set are ever served: no part of a URL is
used as a path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from directory.crl.files import read_regular
from directory.httpdate import http_date, parse_http_date

CRL_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,80}\.(crl|pem)$")
CERT_NAME = re.compile(r"^([a-z0-9][a-z0-9-]{0,62})\.crt$")
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.ASCII | re.IGNORECASE)
_BEYOND = 10**18  # any position with more digits than this is past the end of anything we serve


def pem_crl(data: bytes) -> bytes:
    """PEM form of a DER CRL (served on demand; the build only writes DER)."""
    body = base64.b64encode(data)
    lines = b"\n".join([body[i:i + 64] for i in range(0, len(body), 64)])
    return b"-----BEGIN X509 CRL-----\n" + lines + b"\n-----END X509 CRL-----\n"


@dataclass(frozen=True)
class ServedFile:
    body: bytes
    content_type: str
    etag: str
    last_modified: int | None
    expires: int | None
    stat_key: tuple[int, int, int] | None = None


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def load_crl_file(path: Path) -> ServedFile:
    """Read a published DER CRL (a regular file, never a FIFO or device) and take its dates from it."""
    key = _stat_key(path)
    data = read_regular(path)
    crl = x509.load_der_x509_crl(data)
    next_update = crl.next_update_utc
    return ServedFile(
        body=data,
        content_type="application/pkix-crl",
        etag=f'"{hashlib.sha256(data).hexdigest()[:32]}"',
        last_modified=int(crl.last_update_utc.timestamp()),
        expires=int(next_update.timestamp()) if next_update else None,
        stat_key=key,
    )


class CrlFiles:
    """The published CRL files of one folder, kept in memory and refreshed when the files change."""

    def __init__(self, directory: Path, max_age_cap: int, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.max_age_cap = max_age_cap
        self.clock = clock
        self._files: dict[str, ServedFile] = {}
        # file reads have threads of their own: a slow disk never holds up OCSP, the registry or /metrics
        self.executor = ThreadPoolExecutor(2, thread_name_prefix="crl-files")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def refresh(self, name: str) -> ServedFile | None:
        """(Re)load ``name`` when its file changed; keep the previous bytes if the new ones cannot be read.

        ``NAME.pem`` is derived from ``NAME.crl`` (only DER is written by the builder) and cached with it.
        """
        if name.endswith(".pem"):
            return self._pem(name)
        path = self.directory / name
        key = _stat_key(path)
        current = self._files.get(name)
        if key is None:
            return current
        if current is not None and current.stat_key == key:
            return current
        try:
            loaded = load_crl_file(path)
        except (OSError, ValueError):
            return current
        self._files[name] = loaded
        return loaded

    def _pem(self, name: str) -> ServedFile | None:
        source = self.refresh(name[: -len(".pem")] + ".crl")
        if source is None:
            return None
        current = self._files.get(name)
        if current is not None and current.stat_key == source.stat_key:
            return current
        pem = ServedFile(pem_crl(source.body), "application/x-pem-file", source.etag[:-1] + '-pem"',
                         source.last_modified, source.expires, source.stat_key)
        self._files[name] = pem
        return pem

    def refresh_all(self) -> None:
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                if path.suffix == ".crl" and CRL_NAME.match(path.name):
                    self.refresh(path.name)

    async def get(self, name: str) -> ServedFile | None:
        current = self._files.get(name)
        source = name[: -len(".pem")] + ".crl" if name.endswith(".pem") else name
        key = _stat_key(self.directory / source)
        if current is not None and current.stat_key == key:
            return current
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.refresh, name)


def respond(request: web.Request, file: ServedFile, max_age_cap: int | None, now: float) -> web.Response:
    """A GET/HEAD response with ETag, Last-Modified, Expires, Cache-Control, 304s and single ranges."""
    headers = {"ETag": file.etag, "Accept-Ranges": "bytes", "Content-Type": file.content_type,
               "X-Content-Type-Options": "nosniff"}
    if file.last_modified is not None:
        headers["Last-Modified"] = http_date(file.last_modified)
    if file.expires is not None:
        headers["Expires"] = http_date(file.expires)
        max_age = max(0, int(file.expires - now))
        if max_age_cap is not None:
            max_age = min(max_age, max_age_cap)
        headers["Cache-Control"] = f"public, max-age={max_age}, no-transform" + (
            ", must-revalidate" if max_age == 0 else "")
    else:
        headers["Cache-Control"] = f"public, max-age={max_age_cap or 3600}, no-transform"
    if _not_modified(request, file):
        headers.pop("Content-Type")
        return web.Response(status=304, headers=headers)
    body = file.body
    range_header = request.headers.get("Range")
    if range_header and _if_range_ok(request, file):
        chosen = byte_range(range_header, len(body))
        if chosen == "unsatisfiable":
            headers.pop("Content-Type")
            headers["Content-Range"] = f"bytes */{len(body)}"
            return web.Response(status=416, headers=headers)
        if chosen is not None:
            start, end = chosen
            headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
            return web.Response(status=206, body=body[start:end + 1], headers=headers)
    return web.Response(status=200, body=body, headers=headers)


def _position(digits: str) -> int:
    """A range position; one too long to be real is 'past any end' (no conversion of 5,000 digits)."""
    return int(digits) if len(digits) <= 18 else _BEYOND


def byte_range(header: str, total: int) -> tuple[int, int] | str | None:
    """RFC 9110 §14.1.2 for one range: (first, last) to send, ``"unsatisfiable"`` (416), or None: ignore
    the header and send everything (invalid syntax, ``10-5``, several ranges, other units)."""
    match = _RANGE.fullmatch(header.strip(" \t"))
    if match is None or not (match.group(1) or match.group(2)):
        return None
    first_text, last_text = match.groups()
    if not first_text:  # suffix: the last N bytes
        length = _position(last_text)
        if length == 0 or total == 0:
            return "unsatisfiable"
        return max(0, total - length), total - 1
    first = _position(first_text)
    last = _position(last_text) if last_text else None
    if last is not None and last < first:
        return None  # an invalid range-spec: the header is ignored (not 416)
    if first >= total:
        return "unsatisfiable"
    return first, total - 1 if last is None else min(last, total - 1)


def _not_modified(request: web.Request, file: ServedFile) -> bool:
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        return "*" in tags or file.etag in tags
    ims = request.headers.get("If-Modified-Since")
    if ims and file.last_modified is not None:
        since = parse_http_date(ims)  # None (not an HTTP-date): the header is ignored, RFC 9110 §13.1.3
        return since is not None and file.last_modified <= since
    return False


def _if_range_ok(request: web.Request, file: ServedFile) -> bool:
    if_range = request.headers.get("If-Range")
    return if_range is None or if_range.strip() == file.etag


def ca_file(certificate: x509.Certificate) -> ServedFile:
    der = certificate.public_bytes(Encoding.DER)
    return ServedFile(der, "application/pkix-cert", f'"{hashlib.sha256(der).hexdigest()[:32]}"',
                      int(certificate.not_valid_before_utc.timestamp()), None)
