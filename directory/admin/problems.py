"""Admin API errors as RFC 9457 problem details (``application/problem+json``).

Every error answer carries ``type``, ``title``, ``status`` and ``detail``, plus the fields the API always
answered with (``error``: the short kind; ``errors``: each schema violation with its JSON path). The
kinds of this API have a type URI under ``/api/v1/problems/``, relative to the admin listener, where a GET
answers the kind's documentation; an HTTP error with nothing more to say (no such route, a method not
allowed) is ``about:blank`` with the status phrase as title, as the RFC asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "/api/v1/problems/"


@dataclass(frozen=True)
class ProblemType:
    """One kind of error: what its ``type`` URI documents."""

    error: str  # the ``error`` member, as the API answered before problem details
    title: str
    statuses: tuple[int, ...]
    description: str

    @property
    def slug(self) -> str:
        return self.error.replace(" ", "-")

    @property
    def uri(self) -> str:
        return TYPE_BASE + self.slug

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.uri, "title": self.title, "error": self.error, "statuses": list(self.statuses),
                "description": self.description}


KINDS = {kind.error: kind for kind in (
    ProblemType("unauthenticated", "No valid credentials", (401,),
                "Neither a valid bearer token nor a client certificate from the configured CA: nothing was done."),
    ProblemType("invalid json", "The body is not JSON", (422,),
                "The body is not one JSON document (or is nested too deep): nothing was done."),
    ProblemType("invalid request", "The request does not match its schema", (422,),
                "Each violation is listed in `errors` with its JSON path; the schema is in the OpenAPI document."),
    ProblemType("invalid serial", "Not a serial number", (422,),
                "Serials are hex as openssl prints them (1A2B, 0x1A2B, 1A:2B), decimal only as dec:6699."),
    ProblemType("unknown issuer", "Unknown issuer", (404, 422),
                "No configured issuer has this name (404 in a path, 422 in a body)."),
    ProblemType("unknown certificate", "Unknown certificate", (404,),
                "The issuer has no certificate with this serial; the detail names the certificate a decimal "
                "reading would be, when the registry holds it."),
    ProblemType("conflict", "The current state forbids it", (409,),
                "A revocation rule or a different certificate under the same serial: nothing changed."),
    ProblemType("refused", "Refused", (422,),
                "The certificate or the request was refused by a check (the detail says which): nothing changed."),
    ProblemType("too large", "Body too large", (413,), "The body exceeds [admin] max_body."),
    ProblemType("request timeout", "The request did not arrive in time", (408,),
                "The body was not received whole within [admin] request_timeout."),
    ProblemType("registry unavailable", "Registry unavailable", (503,),
                "The registry could not be reached: nothing was recorded; retry later."),
    ProblemType("internal error", "Internal error", (500,),
                "An unexpected failure, logged with its traceback and recorded in the audit trail under the "
                "request id the detail names."),
)}
BY_SLUG = {kind.slug: kind for kind in KINDS.values()}


def problem(status: int, error: str, detail: str, errors: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The problem details object for one error answer."""
    kind = KINDS.get(error)
    body: dict[str, Any] = {"type": kind.uri if kind else "about:blank",
                            "title": kind.title if kind else HTTPStatus(status).phrase,
                            "status": status, "detail": detail, "error": error}
    if errors:
        body["errors"] = errors
    return body


def error_response(status: int, error: str, detail: str, errors: list[dict[str, str]] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """An error answer: ``application/problem+json``."""
    return web.json_response(problem(status, error, detail, errors), status=status, headers=headers,
                             content_type=MEDIA_TYPE)
