"""``[admin]``: the admin API on its own listener (``AdminComponent``), described by ``openapi.document()``.

Every request is authenticated first (401, logged, nothing done otherwise) and every authenticated call
is appended to the audit trail with its actor and answer; the writes themselves (import, revocation,
release) carry their own audit records, made in their own transactions by the registry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler

from directory import logs, serials
from directory.admin import openapi
from directory.admin.auth import Credentials, server_context
from directory.admin.problems import BY_SLUG, error_response
from directory.config import AdminConfig
from directory.crl.publish import refuse_if_offline
from directory.crl.service import CrlComponent
from directory.ingest.sources import pem_items
from directory.inputs import InputError, format_time, load_json, parse_time
from directory.ops.html import SECURITY_HEADERS
from directory.ops.operations import operations, render_operations
from directory.publication import crl_url, targets_of
from directory.refusal import Refused
from directory.registry import NotRegistered, RegistryError, UnknownCertificate, UnknownIssuer
from directory.registry.store import CertificateRecord
from directory.runtime import importer_for
from directory.service.app import request_ids
from directory.service.listener import ConnectionGate, request_deadline
from directory.service.sockets import listen
from ocsp.http import OcspComponent

if TYPE_CHECKING:
    from directory.service.app import Service

log = logging.getLogger(__name__)
ACTOR = web.RequestKey("actor", str)  # who is calling, set once the credentials are checked
PEM_TYPES = ("application/x-pem-file", "application/pem-certificate-chain", "text/plain")


class ApiError(Refused):
    """A refusal answered with its own status and error name (every other ``Refused``: 409 or 422)."""

    def __init__(self, status: int, error: str, detail: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail, conflict=status == 409)
        self.status, self.error, self.detail, self.errors = status, error, detail, errors


class AdminComponent:
    """Runs the admin listener next to the public one (same process, same registry and HSM)."""

    name = "admin"

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.listener: asyncio.AbstractServer | None = None

    async def start(self, service: Service) -> None:
        config = service.config.admin
        if config is None:
            return
        self.service = service
        self.config: AdminConfig = config
        self.credentials = Credentials(config)
        app = web.Application(client_max_size=config.max_body,
                              middlewares=[request_deadline, request_ids, self._authenticated])
        self.app = app
        app.router.add_post("/api/v1/certificates", self._import)
        app.router.add_post("/api/v1/revocations", self._revoke)
        app.router.add_delete("/api/v1/holds/{issuer}/{serial}", self._release)
        app.router.add_get("/api/v1/certificates/{issuer}/{serial}", self._get)
        app.router.add_post("/api/v1/crls/{issuer}", self._publish_crl)
        app.router.add_get("/api/v1/openapi.json", self._openapi)
        app.router.add_get("/api/v1/problems/{kind}", self._problem_type)
        app.router.add_get("/api/v1/operations", self._operations)
        app.router.add_get("/ops", self._operations_page)
        self.runner = web.AppRunner(app, access_log=None, keepalive_timeout=config.idle_timeout)
        await self.runner.setup()
        budget = service.descriptors
        cap = budget.admin_cap if budget is not None and budget.admin_cap is not None else config.max_connections
        gate = ConnectionGate(cap, config.request_timeout, server_context(config), "admin")
        service.admin_connections = gate
        self.listener = await listen(self.runner, config.host, config.port, gate)
        log.info("admin API on %s://%s:%d (%s)", "https" if config.tls else "http", config.host, config.port,
                 " and ".join(x for x in ("client certificates" if config.client_ca else "",
                                          "bearer token" if config.token_file else "") if x))

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.runner is not None:
            await self.runner.cleanup()

    # -- every request ----------------------------------------------------------------------------
    @web.middleware
    async def _authenticated(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            actor = self.credentials.identify(request)
        except Exception as exc:  # credentials that cannot even be read are no credentials
            log.error("admin API: credentials of %s %s could not be checked (%s)", request.method, request.path,
                      type(exc).__name__)
            actor = None
        if actor is None:
            log.warning("admin API: %s %s refused: no valid credentials", request.method, request.path,
                        extra={"remote": request.remote or "?"})
            return error_response(401, "unauthenticated", "a valid bearer token or client certificate is required",
                                  headers={"WWW-Authenticate": 'Bearer realm="annuaire-admin"'})
        request[ACTOR] = actor
        failure: str | None = None
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc.status, exc.error, exc.detail, exc.errors)
        except Refused as exc:  # a rule said no (an import check, a revocation rule): nothing changed
            response = error_response(409 if exc.conflict else 422, "conflict" if exc.conflict else "refused", str(exc))
        except web.HTTPRequestEntityTooLarge:
            response = error_response(413, "too large", f"the body exceeds {self.config.max_body} bytes")
        except web.HTTPException as exc:
            response = error_response(exc.status, exc.reason.lower(), exc.text or exc.reason)
        except NotRegistered as exc:  # a miss no handler mapped: what the request names is unknown
            response = error_response(404, "unknown issuer" if isinstance(exc, UnknownIssuer)
                                      else "unknown certificate", str(exc))
        except RegistryError as exc:
            log.error("admin API: registry failure: %s", exc)
            response = error_response(503, "registry unavailable", str(exc))
        except ConnectionError as exc:  # the body never came whole ([admin] request_timeout, or a hang-up)
            log.info("admin API: %s %s: connection lost before the body was read", request.method, request.path)
            failure = f"connection lost: {type(exc).__name__}"
            response = error_response(408, "request timeout", "the request did not arrive in time")
        except Exception as exc:  # last resort: a bug is answered, logged with its traceback, and audited
            log.exception("admin API: %s %s failed unexpectedly", request.method, request.path)
            failure = type(exc).__name__
            response = error_response(500, "internal error", f"the request failed unexpectedly ({failure}); it is "
                                      f"recorded in the audit trail with request id {logs.request_id.get()}")
        record = {"method": request.method, "path": request.path, "status": response.status,
                  "request_id": logs.request_id.get()}
        if response.status >= 500 or failure:
            record["failure"] = failure or response.reason
        try:
            await self._blocking(self.service.registry.audit_append, actor, "api-call", None, None, None,
                                 json.dumps(record, separators=(",", ":")))
        except Exception as exc:  # never lose the answer because the trail is down; say so loudly
            log.error("admin API call not recorded in the audit trail: %s: %s", type(exc).__name__, exc)
        log.info("admin API: %s %s -> %d", request.method, request.path, response.status, extra={"actor": actor})
        return response

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # -- routes -----------------------------------------------------------------------------------
    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi.document())

    async def _problem_type(self, request: web.Request) -> web.Response:
        """What a problem ``type`` URI documents (RFC 9457: the type, dereferenced, explains itself)."""
        kind = BY_SLUG.get(request.match_info["kind"])
        if kind is None:
            raise web.HTTPNotFound(text="no such problem type")
        return web.json_response(kind.as_dict())

    async def _operations_data(self) -> dict[str, Any]:
        service = self.service
        readiness, warnings = await service.readiness(), await service.warnings()
        return await self._blocking(operations, service.config, service.registry, time.time(), readiness, warnings)

    async def _operations(self, request: web.Request) -> web.Response:
        return web.json_response(await self._operations_data(), headers={"Cache-Control": "no-store"})

    async def _operations_page(self, request: web.Request) -> web.Response:
        body = render_operations(await self._operations_data())
        return web.Response(text=body, content_type="text/html", charset="utf-8",
                            headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})

    async def _import(self, request: web.Request) -> web.Response:
        der = _certificate_der(await request.read(), request.content_type)
        importer = importer_for(self.service.config, self.service.registry, request[ACTOR])
        issuer, info, outcome = await self._blocking(importer.import_one, der)
        if outcome.result == "conflict":
            raise ApiError(409, "conflict", outcome.message)
        log.info("admin API: certificate %s", outcome.result, extra={"issuer": issuer, "serial": info.serial_hex})
        body = {"result": outcome.result, "issuer": issuer, "serial_hex": info.serial_hex, "sha256": info.sha256,
                "message": outcome.message}
        return web.json_response(body, status=200 if outcome.result == "present" else 201)

    async def _revoke(self, request: web.Request) -> web.Response:
        try:
            data = load_json(await request.read())
        except InputError as exc:
            raise ApiError(422, "invalid json", str(exc)) from None
        errors = openapi.errors_of("RevocationRequest", data)
        if errors:
            raise ApiError(422, "invalid request", "; ".join(f"{e['path']}: {e['message']}" for e in errors), errors)
        serial_hex = _serial(data["serial"])
        invalidity = _rfc3339(data["invalidity_date"]) if "invalidity_date" in data else None
        issuer = data["issuer"]
        self._refuse_if_offline(issuer, "revocation")
        try:
            outcome = await self._blocking(lambda: self.service.registry.revoke(
                issuer, serial_hex, data["reason"], invalidity_date=invalidity, actor=request[ACTOR]))
        except UnknownIssuer:
            raise ApiError(422, "unknown issuer", f"no configured issuer is called {issuer!r}") from None
        except UnknownCertificate:
            detail = await self._unknown(issuer, data["serial"], serial_hex)
            raise ApiError(404, "unknown certificate", detail) from None
        log.info("admin API: %s", outcome.message, extra={"issuer": issuer, "serial": serial_hex})
        body = {"changed": outcome.changed, "message": outcome.message,
                "certificate": await self._describe(outcome.record)}
        return web.json_response(body, status=201 if outcome.changed else 200)

    async def _release(self, request: web.Request) -> web.Response:
        issuer, serial_hex = self._target(request)
        self._refuse_if_offline(issuer, "releasing a hold")
        try:
            outcome = await self._blocking(self.service.registry.release_hold, issuer, serial_hex, request[ACTOR])
        except UnknownCertificate:
            raise ApiError(404, "unknown certificate",
                           await self._unknown(issuer, request.match_info["serial"], serial_hex)) from None
        log.info("admin API: %s", outcome.message, extra={"issuer": issuer, "serial": serial_hex})
        body = {"changed": outcome.changed, "message": outcome.message,
                "certificate": await self._describe(outcome.record)}
        return web.json_response(body)

    async def _publish_crl(self, request: web.Request) -> web.Response:
        issuer = request.match_info["issuer"]
        crls = self.service.find(CrlComponent)
        if issuer not in {i.name for i in self.service.config.issuers} or crls is None:
            raise ApiError(404, "unknown issuer", f"no configured issuer is called {issuer!r}")
        body = await request.read()
        if not body:
            raise ApiError(422, "refused", "empty body: send one CRL, DER or PEM")
        published = await crls.publish(issuer, body, request[ACTOR])
        log.info("admin API: CRL number %d published", published.record.number, extra={"issuer": issuer})
        return web.json_response({
            "issuer": issuer, "number": published.record.number, "entries": published.entries,
            "size": published.size, "this_update": format_time(published.this_update),
            "next_update": format_time(published.next_update), "sha256": published.sha256,
            "url": crl_url(self.service.config.http.base_url, published.path.name)}, status=201)

    async def _get(self, request: web.Request) -> web.Response:
        issuer, serial_hex = self._target(request)
        record = await self._blocking(self.service.registry.get, issuer, serial_hex)
        if record is None:
            raise ApiError(404, "unknown certificate", await self._unknown(issuer, request.match_info["serial"],
                                                                           serial_hex))
        return web.json_response(await self._describe(record))

    async def _unknown(self, issuer: str, text: str, serial_hex: str) -> str:
        """The 404's detail; names the certificate an all-digit serial would be as a decimal, when held."""
        registry = self.service.registry
        return await self._blocking(serials.explain_unknown, issuer, text, serial_hex,
                                    lambda other: registry.get(issuer, other) is not None, "send")

    def _refuse_if_offline(self, name: str, what: str) -> None:
        """409 for a status change on an offline issuer (an unknown one is left to the registry's 404/422)."""
        for issuer in self.service.config.issuers:
            if issuer.name == name:
                refuse_if_offline(issuer, what)

    def _target(self, request: web.Request) -> tuple[str, str]:
        issuer = request.match_info["issuer"]
        if issuer not in {i.name for i in self.service.config.issuers}:
            raise ApiError(404, "unknown issuer", f"no configured issuer is called {issuer!r}")
        return issuer, _serial(request.match_info["serial"])

    # -- publication state ----------------------------------------------------------------------------
    async def _describe(self, record: CertificateRecord) -> dict[str, Any]:
        facts = await self._blocking(self.service.registry.publication_facts, record.issuer, record.serial_hex)
        crl = await self._blocking(self._crl_state, record, facts or {})
        data = record.as_dict()
        data.pop("dns_names", None)
        for key in ("not_before", "not_after", "revocation_time", "invalidity_date"):
            data[key] = format_time(data[key])
        data["publication"] = {"ocsp": self._ocsp_state(record), "crl": crl,
                               "ldap": self._ldap_state(facts or {})}
        return data

    def _ocsp_state(self, record: CertificateRecord) -> dict[str, Any]:
        ocsp = self.service.find(OcspComponent)
        if ocsp is None or not ocsp.serves(record.issuer):
            return {"state": "not served"}
        # what the responder holds is current: a status change drops it first (then it is signed live)
        window = ocsp.presigned_window(record.issuer, record.serial_hex)
        state: dict[str, Any] = {"state": "current", "presigned": window is not None}
        if window is not None:
            state["this_update"], state["next_update"] = format_time(window[0]), format_time(window[1])
        return state

    def _crl_state(self, record: CertificateRecord, facts: dict[str, Any]) -> dict[str, Any]:
        issuer = self.service.config.issuer(record.issuer)
        registry = self.service.registry
        newest = None
        for target in targets_of(issuer):
            if target.scope != "main":
                continue
            r = registry.crl_latest(record.issuer, target.scope, target.kind)
            if r is not None and (newest is None or r.change_seq > newest[1].change_seq):
                newest = (target, r)
        if newest is None:
            return {"state": "not published"}
        target, r = newest
        last_change = facts.get("last_change_seq") or 0
        current = r.change_seq >= last_change
        state: dict[str, Any] = {"state": "current" if current else "pending", "number": r.number,
                                 "kind": target.kind, "this_update": format_time(r.this_update),
                                 "url": crl_url(self.service.config.http.base_url, target.filename)}
        if current:
            state["listed"] = record.status != "good"
        return state

    def _ldap_state(self, facts: dict[str, Any]) -> dict[str, Any]:
        if self.service.config.ldap is None:
            return {"state": "not configured"}
        refused = facts.get("ldap_refused")
        if refused:  # kept in the outbox as a dead letter: never "current" while the directory refuses it
            return {"state": "refused", "dn": facts.get("ldap_dn"), "reason": refused["reason"],
                    "attempts": refused["attempts"], "next_attempt": format_time(refused["next_attempt_at"])}
        if facts.get("ldap_pending"):
            return {"state": "pending", "dn": facts.get("ldap_dn")}
        if facts.get("ldap_layout") and facts.get("ldap_dn") is None:
            return {"state": "not placed", "dn": None}
        return {"state": "current", "dn": facts.get("ldap_dn")}


def _serial(text: str) -> str:
    try:
        return serials.canonical(text)
    except serials.SerialError as exc:
        raise ApiError(422, "invalid serial", str(exc)) from None


def _rfc3339(text: str) -> int:
    try:
        return parse_time(text)
    except InputError as exc:
        raise ApiError(422, "invalid request", f"$.invalidity_date: {exc}",
                       [{"path": "$.invalidity_date", "message": str(exc)}]) from None


def _certificate_der(body: bytes, content_type: str) -> bytes:
    """Exactly one certificate's DER from a PEM or DER body (the importer then checks it like any other)."""
    if not body:
        raise ApiError(422, "refused", "empty body: send one certificate, PEM or DER")
    if body.lstrip().startswith(b"-----BEGIN") or content_type in PEM_TYPES:
        items = list(pem_items("body", body))
        if len(items) != 1:
            raise ApiError(422, "refused", f"one certificate per request, this body holds {len(items)}")
        if items[0].der is None:
            raise ApiError(422, "refused", items[0].error or "not a PEM certificate")
        return items[0].der
    return body
