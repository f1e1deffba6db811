"""The public publication point on the public listener: ``GET /`` (the page, French by default, English with
``?lang=en`` or ``Accept-Language``), ``/status.json`` (the same public data), ``/ca/NAME/ocsp.crt`` (OCSP
responder certificates) and ``/pc/FILE`` (certification policy documents).

The data is ``overview()`` (committed registry rows) and the service's readiness, reduced by
``public.public_view`` to what relying parties may know; the operations data behind it is on the admin
listener (``operations.py``).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from directory.ops import i18n
from directory.ops.documents import PublicDocuments
from directory.ops.html import SECURITY_HEADERS, render
from directory.ops.overview import overview
from directory.ops.public import public_view

if TYPE_CHECKING:
    from directory.service.app import Service

READINESS_CACHE = 5.0  # seconds: the page may be reloaded often, the HSM check need not run each time


class PageComponent:
    """Mounts the public publication point on the public listener."""

    name = "page"

    def __init__(self) -> None:
        self._readiness: tuple[float, dict[str, str]] = (0.0, {})

    async def start(self, service: Service) -> None:
        self.service = service
        self.documents = await asyncio.get_running_loop().run_in_executor(None, PublicDocuments, service.config)
        service.app.router.add_get("/", self._page)
        service.app.router.add_get("/status.json", self._json)
        self.documents.add_routes(service.app)

    async def stop(self) -> None:
        return None

    async def readiness(self) -> dict[str, str]:
        """The service's failing readiness checks, looked at most every ``READINESS_CACHE`` seconds."""
        now = time.time()
        if now - self._readiness[0] > READINESS_CACHE:
            self._readiness = (now, await self.service.readiness())
        return self._readiness[1]

    async def data(self) -> dict[str, Any]:
        """The public data (``/status.json``)."""
        readiness = await self.readiness()
        loop = asyncio.get_running_loop()
        full = await loop.run_in_executor(None, overview, self.service.config, self.service.registry, time.time())
        return public_view(full, readiness)

    async def _json(self, request: web.Request) -> web.Response:
        return web.json_response(await self.data(), headers={"Cache-Control": "no-cache"})

    async def _page(self, request: web.Request) -> web.Response:
        lang = i18n.choose(request.query.get("lang"), request.headers.get("Accept-Language"))
        body = render(await self.data(), lang)
        headers = {**SECURITY_HEADERS, "Content-Language": lang, "Vary": "Accept-Language"}
        return web.Response(text=body, content_type="text/html", charset="utf-8", headers=headers)
