"""The admin API's OpenAPI 3.1 document: the one description of its routes, bodies and answers.

The handlers validate request bodies against these very schemas (``validate``), and the tests check
every route and every answer against it, so the document cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

from directory.admin.problems import BY_SLUG, KINDS, MEDIA_TYPE, TYPE_BASE
from directory.config import ISSUER_NAME
from directory.revocation import REASON_CODES

# serials are hex (as openssl prints them); decimal only with the dec: marker (directory/serials.py reads them)
SERIAL_PATTERN = (r"^(?:(?:0[xX])?[0-9A-Fa-f]{1,78}|[0-9A-Fa-f]{1,2}(?::[0-9A-Fa-f]{1,2}){1,39}"
                  r"|[dD][eE][cC]:[0-9]{1,76})$")

_PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details (application/problem+json), with this API's error and errors",
    "required": ["type", "title", "status", "detail", "error"],
    "properties": {
        "type": {"type": "string", "format": "uri-reference",
                 "description": f"{TYPE_BASE}KIND (GET it for the kind's documentation), or about:blank for a "
                                "plain HTTP error"},
        "title": {"type": "string", "description": "the kind, for a person (the same for every occurrence)"},
        "status": {"type": "integer", "description": "the HTTP status of this answer"},
        "detail": {"type": "string", "description": "what is wrong this time, for a person"},
        "error": {"type": "string", "description": "short machine-readable kind",
                  "examples": sorted(KINDS)},
        "errors": {"type": "array", "items": {
            "type": "object", "required": ["path", "message"],
            "properties": {"path": {"type": "string"}, "message": {"type": "string"}}}},
    },
}

_TIME = {"type": ["string", "null"], "description": "RFC 3339 UTC time"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": _PROBLEM,
    "ProblemType": {
        "type": "object",
        "required": ["type", "title", "error", "statuses", "description"],
        "properties": {
            "type": {"type": "string"}, "title": {"type": "string"}, "error": {"type": "string"},
            "statuses": {"type": "array", "items": {"type": "integer"}}, "description": {"type": "string"},
        },
    },
    "RevocationRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["issuer", "serial", "reason"],
        "properties": {
            "issuer": {"type": "string", "pattern": ISSUER_NAME.pattern, "description": "configured issuer name"},
            "serial": {"type": "string", "pattern": SERIAL_PATTERN, "maxLength": 80,
                       "description": "hex as openssl prints it (1A2B, 0x1A2B, 1A:2B); decimal only as dec:6699"},
            "reason": {"type": "string", "enum": list(REASON_CODES), "description": "RFC 5280 CRLReason name"},
            "invalidity_date": {"type": "string", "format": "date-time", "maxLength": 40,
                                "description": "RFC 3339 with an offset (Z or +hh:mm); not after the revocation "
                                               "time, not more than a year before notBefore; not for "
                                               "certificateHold"},
        },
    },
    "Certificate": {
        "type": "object",
        "required": ["issuer", "serial_hex", "status", "publication"],
        "properties": {
            "issuer": {"type": "string"},
            "serial_hex": {"type": "string"},
            "subject": {"type": ["string", "null"]},
            "emails": {"type": "array", "items": {"type": "string"}},
            "professional_id": {"type": ["string", "null"]},
            "sha256": {"type": ["string", "null"]},
            "profile": {"type": ["string", "null"]},
            "not_before": _TIME,
            "not_after": _TIME,
            "status": {"type": "string", "enum": ["good", "revoked", "on-hold"]},
            "reason": {"type": ["string", "null"]},
            "revocation_time": _TIME,
            "invalidity_date": _TIME,
            "forced": {"type": "boolean"},
            "publication": {
                "type": "object",
                "required": ["ocsp", "crl", "ldap"],
                "properties": {
                    "ocsp": {"type": "object", "required": ["state"], "properties": {
                        "state": {"enum": ["current", "not served"]},
                        "presigned": {"type": "boolean"},
                        "this_update": _TIME, "next_update": _TIME}},
                    "crl": {"type": "object", "required": ["state"], "properties": {
                        "state": {"enum": ["current", "pending", "not published"]},
                        "listed": {"type": "boolean"},
                        "number": {"type": "integer"}, "kind": {"type": "string"},
                        "url": {"type": "string"}, "this_update": _TIME}},
                    "ldap": {"type": "object", "required": ["state"], "properties": {
                        "state": {"enum": ["current", "pending", "refused", "not placed", "not configured"]},
                        "dn": {"type": ["string", "null"]},
                        "reason": {"type": "string", "description": "refused: what the directory answered"},
                        "attempts": {"type": "integer"}, "next_attempt": _TIME}},
                },
            },
        },
    },
    "ImportResult": {
        "type": "object",
        "required": ["result", "issuer", "serial_hex", "sha256"],
        "properties": {
            "result": {"enum": ["created", "present", "completed"]},
            "issuer": {"type": "string"}, "serial_hex": {"type": "string"}, "sha256": {"type": "string"},
            "message": {"type": "string"},
        },
    },
    "Operations": {
        "type": "object",
        "required": ["generated_at", "health", "readiness", "issuers", "directory", "checks"],
        "properties": {
            "generated_at": {"type": "integer"},
            "health": {"type": "object", "required": ["ok", "problems"], "properties": {
                "ok": {"type": "boolean"},
                "problems": {"type": "array", "items": {"type": "object", "required": ["part", "text"], "properties": {
                    "part": {"type": "string"}, "text": {"type": "string"}}}}}},
            "readiness": {"type": "object", "required": ["ready", "problems", "warnings"], "properties": {
                "ready": {"type": "boolean"},
                "problems": {"type": "object", "additionalProperties": {"type": "string"}},
                "warnings": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "issuers": {"type": "array", "items": {"type": "object"},
                        "description": "as /status.json: certificates, CRLs, OCSP, policies, counts"},
            "directory": {"type": ["object", "null"], "description": "the directory's synchronisation: outbox "
                          "depth and lag, passes, drift found and repaired, failures, writes refused (dead letters)"},
            "checks": {"type": "array", "items": {"type": "object"},
                       "description": "each node's last publication checker report"},
        },
    },
    "CrlPublished": {
        "type": "object",
        "required": ["issuer", "number", "entries", "size", "this_update", "next_update", "sha256", "url"],
        "properties": {
            "issuer": {"type": "string"},
            "number": {"type": "integer", "description": "its cRLNumber (the next one must be greater)"},
            "entries": {"type": "integer"},
            "size": {"type": "integer"},
            "this_update": {"type": "string", "format": "date-time"},
            "next_update": {"type": "string", "format": "date-time"},
            "sha256": {"type": "string"},
            "url": {"type": "string", "description": "where it is served"},
        },
    },
    "ChangeResult": {
        "type": "object",
        "required": ["changed", "message", "certificate"],
        "properties": {
            "changed": {"type": "boolean"},
            "message": {"type": "string"},
            "certificate": {"$ref": "#/components/schemas/Certificate"},
        },
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, schema: str = "Problem") -> dict[str, Any]:
    """A documented answer; errors (``Problem``) are ``application/problem+json``."""
    media = MEDIA_TYPE if schema == "Problem" else "application/json"
    return {"description": description, "content": {media: {"schema": _ref(schema)}}}


_AUTH_ANSWERS = {
    "401": _answer("no valid credentials (bearer token or client certificate); nothing was done"),
    "413": _answer("body larger than [admin] max_body"),
}
_TARGET = [
    {"name": "issuer", "in": "path", "required": True, "schema": {"type": "string", "pattern": ISSUER_NAME.pattern}},
    {"name": "serial", "in": "path", "required": True, "schema": {"type": "string", "pattern": SERIAL_PATTERN,
                                                                  "maxLength": 80}},
]


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "annuaire admin API", "version": "1",
                 "description": "Import certificates, revoke, release holds and look up publication state. "
                                "Every call is authenticated and recorded in the hash-chained audit trail. "
                                "Errors are RFC 9457 problem details (application/problem+json)."},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "clientCertificate": {"type": "mutualTLS"}},
        },
        "security": [{"bearer": []}, {"clientCertificate": []}],
        "paths": {
            "/api/v1/certificates": {"post": {
                "operationId": "importCertificate",
                "summary": "Import one certificate (the checks and idempotence of `annuaire import`)",
                "requestBody": {"required": True, "content": {
                    "application/pkix-cert": {"schema": {"type": "string",
                                                         "contentMediaType": "application/pkix-cert"}},
                    "application/x-pem-file": {"schema": {"type": "string"}}}},
                "responses": {"201": _answer("imported", "ImportResult"),
                              "200": _answer("already present with the same bytes: nothing changed", "ImportResult"),
                              "409": _answer("this issuer and serial are registered with other bytes"),
                              "422": _answer("refused: not a certificate, unknown issuer, bad signature, ..."),
                              **_AUTH_ANSWERS}}},
            "/api/v1/revocations": {"post": {
                "operationId": "revoke",
                "summary": "Revoke or place on hold (RFC 5280 rules of `annuaire revoke`)",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("RevocationRequest")}}},
                "responses": {"201": _answer("revoked, placed on hold, or reason changed", "ChangeResult"),
                              "200": _answer("already in that state: nothing changed", "ChangeResult"),
                              "404": _answer("the issuer has no certificate with this serial"),
                              "409": _answer("the certificate's state forbids it (e.g. a reason change away "
                                             "from a final revocation)"),
                              "422": _answer("invalid request (schema, unknown issuer, times)"),
                              **_AUTH_ANSWERS}}},
            "/api/v1/holds/{issuer}/{serial}": {"delete": {
                "operationId": "releaseHold",
                "summary": "Release a certificateHold",
                "parameters": _TARGET,
                "responses": {"200": _answer("released, or was not on hold (changed: false)", "ChangeResult"),
                              "404": _answer("unknown issuer or serial"),
                              "409": _answer("revoked for good: only a hold can be released"),
                              "422": _answer("invalid serial"),
                              **_AUTH_ANSWERS}}},
            "/api/v1/certificates/{issuer}/{serial}": {"get": {
                "operationId": "getCertificate",
                "summary": "Status of one certificate and its publication state in OCSP, CRL and LDAP",
                "parameters": _TARGET,
                "responses": {"200": _answer("the certificate", "Certificate"),
                              "404": _answer("unknown issuer or serial"),
                              "422": _answer("invalid serial"),
                              **_AUTH_ANSWERS}}},
            "/api/v1/operations": {"get": {
                "operationId": "operations",
                "summary": "The operator view: every problem with its details, readiness, the directory's "
                           "synchronisation, the publication checks (what the public page leaves out)",
                "responses": {"200": _answer("the service as its operators see it", "Operations"), **_AUTH_ANSWERS}}},
            "/ops": {"get": {
                "operationId": "operationsPage",
                "summary": "The operator view as an HTML page",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}, **_AUTH_ANSWERS}}},
            "/api/v1/crls/{issuer}": {"post": {
                "operationId": "publishCrl",
                "summary": "Serve a CRL signed elsewhere (an offline root's ARL, a moved CA's last CRL): the "
                           "checks and install of `annuaire crl publish`",
                "parameters": _TARGET[:1],
                "requestBody": {"required": True, "content": {
                    "application/pkix-crl": {"schema": {"type": "string", "contentMediaType": "application/pkix-crl"}},
                    "application/x-pem-file": {"schema": {"type": "string"}}}},
                "responses": {"201": _answer("checked, installed and served", "CrlPublished"),
                              "404": _answer("unknown issuer"),
                              "409": _answer("its cRLNumber is not greater than the issuer's last one"),
                              "422": _answer("refused: not a CRL, another issuer, bad signature, expired, delta, ..."),
                              **_AUTH_ANSWERS}}},
            "/api/v1/openapi.json": {"get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}},
                              **_AUTH_ANSWERS}}},
            f"{TYPE_BASE}{{kind}}": {"get": {
                "operationId": "problemType",
                "summary": "What a problem type URI stands for (the type member of an error answer)",
                "parameters": [{"name": "kind", "in": "path", "required": True,
                                "schema": {"type": "string", "enum": sorted(BY_SLUG)}}],
                "responses": {"200": _answer("the kind's title, statuses and description", "ProblemType"),
                              "404": _answer("no such problem type"),
                              **_AUTH_ANSWERS}}},
        },
    }


def validator(schema_name: str) -> Draft202012Validator:
    """A validator for one component schema, resolving ``$ref`` within the document."""
    doc = document()
    schema = {**SCHEMAS[schema_name], "components": doc["components"]}
    return Draft202012Validator(schema)


def errors_of(schema_name: str, value: Any) -> list[dict[str, str]]:
    """Every violation, each with the JSON path it is at: what a caller needs to fix the request."""
    found = sorted(validator(schema_name).iter_errors(value), key=lambda e: list(e.absolute_path))
    return [{"path": "$" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path),
             "message": e.message[:300]} for e in found]
