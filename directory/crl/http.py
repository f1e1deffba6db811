"""Serving published CRLs and CA certificates over HTTP with correct caching semantics.

Readers get the last published bytes from memory: a build in progress never makes them wait, and a file
replaced on disk by another process (``annuaire crl build``) is noticed by a ``stat`` and reloaded. Only
names that match a strict pattern and are in the published set are ever served: no part of a URL is
used as a path.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from directory.crl.builder import pem_crl
from directory.httpdate import http_date

CRL_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,80}\.(crl|pem)$")
CERT_NAME = re.compile(r"^([a-z0-9][a-z0-9-]{0,62})\.crt$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


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
    """Read a published DER CRL and take thisUpdate/nextUpdate from it."""
    key = _stat_key(path)
    data = path.read_bytes()
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
        return await asyncio.get_running_loop().run_in_executor(None, self.refresh, name)


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
        match = _RANGE.match(range_header.strip())
        if match and (match.group(1) or match.group(2)):
            total = len(body)
            start_text, end_text = match.groups()
            if start_text:
                start = int(start_text)
                end = min(int(end_text), total - 1) if end_text else total - 1
            else:
                start, end = max(0, total - int(end_text)), total - 1
            if start >= total or start > end:
                headers.pop("Content-Type")
                headers["Content-Range"] = f"bytes */{total}"
                return web.Response(status=416, headers=headers)
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
            return web.Response(status=206, body=body[start:end + 1], headers=headers)
        # multiple or malformed ranges: RFC 9110 lets us ignore Range and send the whole file
    return web.Response(status=200, body=body, headers=headers)


def _not_modified(request: web.Request, file: ServedFile) -> bool:
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        return "*" in tags or file.etag in tags
    ims = request.headers.get("If-Modified-Since")
    if ims and file.last_modified is not None:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return file.last_modified <= since.timestamp()
    return False


def _if_range_ok(request: web.Request, file: ServedFile) -> bool:
    if_range = request.headers.get("If-Range")
    return if_range is None or if_range.strip() == file.etag


def ca_file(certificate: x509.Certificate) -> ServedFile:
    der = certificate.public_bytes(Encoding.DER)
    return ServedFile(der, "application/pkix-cert", f'"{hashlib.sha256(der).hexdigest()[:32]}"',
                      int(certificate.not_valid_before_utc.timestamp()), None)
