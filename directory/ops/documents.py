"""What a CA's publication point serves besides CRLs and CA certificates: each delegated OCSP responder's
certificate (``/ca/NAME/ocsp.crt``, DER) and the certification policy documents of ``[[issuers.policies]]``
(``/pc/FILE``).

Everything is read once, at start, from the configuration (no part of a URL is ever used as a path: a
request is looked up by name in what was loaded). HTML documents are served with a sandboxing CSP: they
come from operators, but a page of ours must not run scripts on this origin.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable

from aiohttp import web

from directory.config import Config
from directory.config.policies import DOCUMENT_TYPES, MAX_DOCUMENT
from directory.crl.files import read_regular
from directory.crl.http import ServedFile, ca_file, respond

log = logging.getLogger(__name__)
DOCUMENT_MAX_AGE = 3600
SANDBOX = "sandbox; default-src 'none'; img-src 'self'; style-src 'self'"  # operators' HTML: no script, no form


class PublicDocuments:
    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.signers: dict[str, ServedFile] = {}
        self.policies: dict[str, ServedFile] = {}
        for issuer in config.issuers:
            if issuer.ocsp is not None and issuer.ocsp.signer_certificate is not None:
                self.signers[issuer.name] = ca_file(issuer.ocsp.signer_certificate)
            for doc in issuer.policies:
                if doc.file is not None and doc.name is not None and doc.name not in self.policies:
                    self.policies[doc.name] = _document(doc.file)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ca/{issuer}/ocsp.crt", self._signer)
        app.router.add_get("/pc/{name}", self._policy)

    async def _signer(self, request: web.Request) -> web.Response:
        served = self.signers.get(request.match_info["issuer"])
        if served is None:
            raise web.HTTPNotFound(text="no such OCSP responder certificate\n")
        return respond(request, served, 86400, self.clock())

    async def _policy(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        served = self.policies.get(name)
        if served is None:
            raise web.HTTPNotFound(text="no such document\n")
        response = respond(request, served, DOCUMENT_MAX_AGE, self.clock())
        response.headers["Content-Disposition"] = f'inline; filename="{name}"'  # names are [A-Za-z0-9._-]
        if served.content_type.startswith("text/html"):
            response.headers["Content-Security-Policy"] = SANDBOX
        return response


def _document(path: os.PathLike[str]) -> ServedFile:
    """A policy document's bytes (a regular file, bounded), its type from its (checked) suffix."""
    data = read_regular(path, MAX_DOCUMENT)  # type: ignore[arg-type]
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    mtime = int(os.stat(path).st_mtime)
    log.info("certification policy document %s: %d bytes", os.fspath(path), len(data))
    return ServedFile(data, DOCUMENT_TYPES[suffix], f'"{hashlib.sha256(data).hexdigest()[:32]}"', mtime, None)
