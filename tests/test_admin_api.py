"""The admin API of a served demo: authentication on every route, the OpenAPI document matching the
handlers and every answer, import/revoke/release/look-up semantics, audit records, metrics moving."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import subprocess
import time
from http import HTTPStatus
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families

from directory.admin import openapi
from directory.config import load_config
from tests.admin_client import call
from tests.ldap_env import issue
from tests.served import http, serve

ROUTES = [("POST", "/api/v1/certificates"), ("POST", "/api/v1/revocations"),
          ("DELETE", "/api/v1/holds/ac-personnes/0x01"), ("GET", "/api/v1/certificates/ac-personnes/0x01"),
          ("GET", "/api/v1/openapi.json"), ("GET", "/api/v1/problems/unknown-issuer"),
          ("POST", "/api/v1/crls/ac-racine")]


def _audit_count(demo: Path) -> int:
    with sqlite3.connect(demo.parent / "data" / "registry.sqlite3") as conn:
        return conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]


def _conforms(method: str, path_template: str, status: int, body: Any) -> None:
    """The answer is documented for this route and status, and matches its schema (errors: problem details)."""
    doc = openapi.document()
    operation = doc["paths"][path_template][method.lower()]
    assert str(status) in operation["responses"], (method, path_template, status, body)
    media = "application/problem+json" if status >= 400 else "application/json"
    content = operation["responses"][str(status)].get("content", {}).get(media, {})
    schema = content.get("schema")
    if schema is not None:
        Draft202012Validator({**schema, "components": doc["components"]}).validate(body)


def _metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = http(base + "/metrics")
    assert status == 200
    values = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def _value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def test_admin_api_with_a_bearer_token(demo: Path) -> None:
    config = load_config(demo)
    token = (demo.parent / "secrets" / "admin-token").read_text().strip()
    fresh = issue(config, "ac-personnes", x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Alice API"),
                                                      x509.NameAttribute(NameOID.SERIAL_NUMBER, "810000000042")]))
    fresh_serial = format(x509.load_der_x509_certificate(fresh).serial_number, "x")
    manifest = json.loads((demo.parent / "certs" / "manifest.json").read_text())
    good = [m for m in manifest if m["issuer"] == "ac-personnes" and m.get("status", "good") == "good"]
    with serve(demo) as served:
        admin = served.admin
        # -- every route refuses missing and wrong credentials, records nothing, changes nothing
        before = _audit_count(demo)
        for method, path in ROUTES:
            for credentials in (None, "not-the-token", token + "x", ""):
                body = {"issuer": "ac-personnes", "serial": good[0]["serial_hex"], "reason": "keyCompromise"}
                status, headers, answer = call(admin, method, path, body if method == "POST" else None,
                                               token=credentials)
                assert status == 401, (method, path, credentials, status, answer)
                assert headers.get("www-authenticate", "").startswith("Bearer")
                assert answer["error"] == "unauthenticated"
        assert _audit_count(demo) == before
        assert run_show(demo, "ac-personnes", good[0]["serial_hex"])["status"] == "good"

        # -- the OpenAPI document lists exactly the routes the handlers serve
        status, _, doc = call(admin, "GET", "/api/v1/openapi.json", token=token)
        assert status == 200 and doc == json.loads(json.dumps(openapi.document()))
        Draft202012Validator.check_schema(doc["components"]["schemas"]["RevocationRequest"])
        documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
        assert documented == {("POST", "/api/v1/certificates"), ("POST", "/api/v1/revocations"),
                              ("DELETE", "/api/v1/holds/{issuer}/{serial}"),
                              ("GET", "/api/v1/certificates/{issuer}/{serial}"), ("GET", "/api/v1/openapi.json"),
                              ("GET", "/api/v1/problems/{kind}"), ("GET", "/api/v1/operations"), ("GET", "/ops"),
                              ("POST", "/api/v1/crls/{issuer}")}
        status, _, answer = call(admin, "GET", "/api/v1/operations", token=token)
        _conforms("GET", "/api/v1/operations", status, answer)

        # -- import: 201, then 200 (idempotent), PEM or DER; refusals are 422 with the reason
        status, _, answer = call(admin, "POST", "/api/v1/certificates", fresh, token=token,
                                 content_type="application/pkix-cert")
        _conforms("POST", "/api/v1/certificates", status, answer)
        assert status == 201 and answer["result"] == "created" and answer["serial_hex"] == fresh_serial
        pem = x509.load_der_x509_certificate(fresh).public_bytes(Encoding.PEM)
        status, _, answer = call(admin, "POST", "/api/v1/certificates", pem, token=token,
                                 content_type="application/x-pem-file")
        _conforms("POST", "/api/v1/certificates", status, answer)
        assert status == 200 and answer["result"] == "present"
        for bad, why in ((b"\x30\x03\x02\x01\x01", "not a valid DER"), (pem + pem, "one certificate per request"),
                         ((demo.parent / "ca" / "ac-racine.pem").read_bytes(), "configured, not imported"),
                         (_self_signed(), "not a configured issuer")):
            status, _, answer = call(admin, "POST", "/api/v1/certificates", bad, token=token)
            _conforms("POST", "/api/v1/certificates", status, answer)
            assert status == 422 and why in answer["detail"], answer
        status, _, answer = call(admin, "POST", "/api/v1/certificates", b"x" * (2 * 1024 * 1024), token=token)
        assert status == 413 and answer["error"] == "too large"

        # -- look-up: status and publication state in the three channels
        status, _, answer = call(admin, "GET", f"/api/v1/certificates/ac-personnes/0x{fresh_serial}", token=token)
        _conforms("GET", "/api/v1/certificates/{issuer}/{serial}", status, answer)
        assert status == 200 and answer["status"] == "good" and "CN=Alice API" in answer["subject"]
        assert answer["publication"]["ocsp"]["state"] == "current"
        for path, code in (("/api/v1/certificates/ac-personnes/0xdeadbeef", 404),
                           ("/api/v1/certificates/nobody/0x01", 404),
                           ("/api/v1/certificates/ac-personnes/xyz", 422)):
            status, _, answer = call(admin, "GET", path, token=token)
            _conforms("GET", "/api/v1/certificates/{issuer}/{serial}", status, answer)
            assert status == code, (path, answer)

        # -- revocations: schema errors name the field; the revocation rules give 201/200/409/422/404
        metrics_before = _metrics(served.base)
        status, _, answer = call(admin, "POST", "/api/v1/revocations",
                                 {"issuer": "ac-personnes", "serial": "0x1", "reason": "stolen", "extra": 1},
                                 token=token)
        _conforms("POST", "/api/v1/revocations", status, answer)
        assert status == 422 and {e["path"] for e in answer["errors"]} == {"$", "$.reason"}
        status, _, answer = call(admin, "POST", "/api/v1/revocations", b"{not json", token=token,
                                 content_type="application/json")
        assert status == 422 and answer["error"] == "invalid json"
        target = good[0]["serial_hex"]
        request = {"issuer": "ac-personnes", "serial": target, "reason": "keyCompromise",
                   "invalidity_date": "2026-01-02T03:04:05Z"}
        status, headers, answer = call(admin, "POST", "/api/v1/revocations", request, token=token,
                                       headers={"X-Request-ID": "rid-revoke-42"})
        _conforms("POST", "/api/v1/revocations", status, answer)
        assert status == 201 and answer["changed"] and answer["certificate"]["status"] == "revoked"
        assert headers["x-request-id"] == "rid-revoke-42"
        assert answer["certificate"]["invalidity_date"] == "2026-01-02T03:04:05Z"
        status, _, answer = call(admin, "POST", "/api/v1/revocations", request, token=token)
        assert status == 200 and not answer["changed"]
        status, _, answer = call(admin, "POST", "/api/v1/revocations", {**request, "reason": "superseded"},
                                 token=token)
        _conforms("POST", "/api/v1/revocations", status, answer)
        assert status == 409 and "keyCompromise" in answer["detail"]
        status, _, answer = call(admin, "POST", "/api/v1/revocations",
                                 {**request, "serial": "0xdeadbeef"}, token=token)
        _conforms("POST", "/api/v1/revocations", status, answer)
        assert status == 404
        status, _, answer = call(admin, "POST", "/api/v1/revocations",
                                 {**request, "serial": good[1]["serial_hex"],
                                  "invalidity_date": "2999-01-01T00:00:00Z"}, token=token)
        assert status == 422 and "invalidity date" in answer["detail"]

        # -- holds: placed, released (200), released again (200, unchanged), a final revocation is 409
        hold = {"issuer": "ac-personnes", "serial": good[2]["serial_hex"], "reason": "certificateHold"}
        assert call(admin, "POST", "/api/v1/revocations", hold, token=token)[0] == 201
        path = f"/api/v1/holds/ac-personnes/{good[2]['serial_hex']}"
        status, _, answer = call(admin, "DELETE", path, token=token)
        _conforms("DELETE", "/api/v1/holds/{issuer}/{serial}", status, answer)
        assert status == 200 and answer["changed"] and answer["certificate"]["status"] == "good"
        status, _, answer = call(admin, "DELETE", path, token=token)
        assert status == 200 and not answer["changed"]
        status, _, answer = call(admin, "DELETE", f"/api/v1/holds/ac-personnes/{target}", token=token)
        _conforms("DELETE", "/api/v1/holds/{issuer}/{serial}", status, answer)
        assert status == 409

        # -- the revocation reaches every channel, and the metrics say so
        deadline = time.monotonic() + 20
        while True:
            status, _, answer = call(admin, "GET", f"/api/v1/certificates/ac-personnes/{target}", token=token)
            states = {k: v["state"] for k, v in answer["publication"].items()}
            if states == {"ocsp": "current", "crl": "current", "ldap": "current"} or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert states == {"ocsp": "current", "crl": "current", "ldap": "current"}, answer["publication"]
        assert answer["publication"]["crl"]["listed"] is True
        # Each channel observes a change once it serves it, after the registry records what the look-up reads
        # (the CRL part: once the new file is loaded), so the counts may follow the states by a moment.
        while True:
            after = _metrics(served.base)
            moved = {channel: (_value(after, "annuaire_revocation_visibility_seconds_count", channel=channel)
                               - _value(metrics_before, "annuaire_revocation_visibility_seconds_count",
                                        channel=channel))
                     for channel in ("ocsp", "crl", "ldap")}
            if min(moved.values()) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert min(moved.values()) >= 2, moved  # the revocation and the hold (and its release), on each channel
        assert (_value(after, "annuaire_certificates", issuer="ac-personnes", status="revoked")
                == _value(metrics_before, "annuaire_certificates", issuer="ac-personnes", status="revoked") + 1)
        assert (_value(after, "annuaire_crl_number", issuer="ac-personnes", scope="main", kind="delta")
                > _value(metrics_before, "annuaire_crl_number", issuer="ac-personnes", scope="main", kind="delta"))
        assert _value(after, "annuaire_crl_next_update_seconds", issuer="ac-personnes", scope="main", kind="full") > 0
        assert _value(after, "annuaire_hsm_sign_duration_seconds_count") > 0
        assert ("annuaire_ldap_outbox_depth", ()) in after  # a CRL just published may still be on its way
        assert _value(after, "annuaire_ldap_sync_lag_seconds") < 10
        # identity: the build, the standard process families, the time left on every signer's certificate
        builds = [dict(labels) for name, labels in after if name == "annuaire_build_info"]
        assert [b["version"] for b in builds] == [metadata.version("annuaire")]
        assert _value(after, "process_resident_memory_bytes") > 0 and _value(after, "process_open_fds") > 0
        assert any(name == "python_info" for name, _ in after)
        for role in ("ca", "ocsp-signer"):
            assert _value(after, "annuaire_certificate_expiry_seconds", issuer="ac-personnes", role=role) > 86400

        # -- every error is RFC 9457 problem details; each type URI, dereferenced, documents its kind
        for method, path, body, expected, credentials in (
                ("GET", "/api/v1/certificates/ac-personnes/0xdeadbeef", None, 404, token),
                ("POST", "/api/v1/revocations", {"issuer": "ac-personnes"}, 422, token),
                ("DELETE", f"/api/v1/holds/ac-personnes/{target}", None, 409, token),
                ("GET", "/api/v1/openapi.json", None, 401, None),
                ("GET", "/api/v1/nowhere", None, 404, token),
                ("PUT", "/api/v1/revocations", None, 405, token),
                ("GET", "/api/v1/problems/no-such-kind", None, 404, token)):
            status, headers, answer = call(admin, method, path, body, token=credentials)
            assert status == expected and headers["content-type"].startswith("application/problem+json"), (
                path, status, headers)
            Draft202012Validator({**openapi.SCHEMAS["Problem"], "components": {}}).validate(answer)
            assert answer["status"] == status and answer["detail"], answer
            if answer["type"] == "about:blank":
                assert answer["title"] == HTTPStatus(status).phrase
                continue
            kind_status, _, kind = call(admin, "GET", answer["type"], token=token)
            _conforms("GET", "/api/v1/problems/{kind}", kind_status, kind)
            assert kind_status == 200 and kind["type"] == answer["type"] and kind["title"] == answer["title"]
            assert status in kind["statuses"] and kind["error"] == answer["error"]

    # -- the log is JSON lines; the revocation's events carry its request id, issuer and serial
    events = [json.loads(line) for line in served.output.splitlines() if line.startswith("{")]
    assert len(events) == len([line for line in served.output.splitlines() if line.strip()])
    mine = [e for e in events if e.get("request_id") == "rid-revoke-42"]
    assert any(e.get("issuer") == "ac-personnes" and e.get("serial") == target for e in mine), mine
    assert token not in served.output

    # -- every authenticated call is in the audit trail, with its actor; the chain verifies
    records = [json.loads(line) for line in subprocess.run(
        [*_cli(), "audit", "export", "-c", str(demo)], capture_output=True, text=True, check=True).stdout.splitlines()]
    calls = [r for r in records if r["action"] == "api-call"]
    assert all(r["actor"] == "admin:token" for r in calls) and len(calls) >= 20
    assert any(json.loads(r["after"])["status"] == 409 for r in calls)
    revocations = [r for r in records if r["action"] == "revoke" and r["serial_hex"] == target]
    assert revocations and revocations[0]["actor"] == "admin:token"
    verify = subprocess.run([*_cli(), "audit", "verify", "-c", str(demo), "--json"], capture_output=True, text=True)
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"], verify.stdout


def test_a_registry_miss_is_a_404_and_a_registry_failure_a_503(tmp_path: Path) -> None:
    """A look-up miss no handler maps itself (here: a configured issuer the registry does not hold) is a
    404 as documented, not the 503 of a registry that fails; every call is in the audit chain."""
    from directory.admin.api import AdminComponent
    from directory.registry import Registry, RegistryError

    registry = Registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}")  # no issuer recorded in it
    component = AdminComponent()
    component.service = SimpleNamespace(  # type: ignore[assignment]
        registry=registry, config=SimpleNamespace(issuers=[SimpleNamespace(name="ac-personnes", offline=False)]))
    component.config = SimpleNamespace(max_body=1024)  # type: ignore[assignment]
    component.credentials = SimpleNamespace(identify=lambda request: "admin:token")  # type: ignore[assignment]

    async def down(request: web.Request) -> web.Response:
        raise RegistryError("registry unreachable: connection refused")

    def answer(method: str, path: str, handler: Any) -> tuple[int, dict[str, Any]]:
        request = make_mocked_request(method, path, match_info={"issuer": "ac-personnes", "serial": "0x01"})
        response = asyncio.run(component._authenticated(request, handler))
        return response.status, json.loads(response.body)

    for method, template, handler in (("GET", "/api/v1/certificates/{issuer}/{serial}", component._get),
                                      ("DELETE", "/api/v1/holds/{issuer}/{serial}", component._release)):
        status, body = answer(method, template.format(issuer="ac-personnes", serial="0x01"), handler)
        assert (status, body) == (404, {"type": "/api/v1/problems/unknown-issuer", "title": "Unknown issuer",
                                        "status": 404, "error": "unknown issuer",
                                        "detail": "unknown issuer 'ac-personnes'"})
        _conforms(method, template, status, body)
    status, body = answer("GET", "/api/v1/certificates/ac-personnes/0x01", down)
    assert status == 503 and body["error"] == "registry unavailable"
    calls = [json.loads(r["after"]) for r in registry.audit_records() if r["action"] == "api-call"]
    assert [(c["method"], c["status"]) for c in calls] == [("GET", 404), ("DELETE", 404), ("GET", 503)]
    registry.close()


def _self_signed() -> bytes:
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())  # a stranger's certificate: test-only key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stranger CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(Encoding.DER)


def run_show(demo: Path, issuer: str, serial: str) -> dict[str, Any]:
    result = subprocess.run([*_cli(), "show", "-c", str(demo), "--issuer", issuer, "--serial", serial, "--json"],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def _cli() -> list[str]:
    from tests.conftest import ANNUAIRE

    return list(ANNUAIRE)


@pytest.mark.parametrize("key", ["token_file", "client_ca"])
def test_admin_config_refuses_unsafe_setups(demo: Path, key: str) -> None:
    """No credentials at all, or a token in clear text off loopback: refused before anything starts."""
    text = demo.read_text()
    if key == "token_file":
        text = text.replace('token_file = "secrets/admin-token"\n', "")
        expected = "never runs without credentials"
    else:
        text = text.replace('[admin]\nlisten = "127.0.0.1:', '[admin]\nlisten = "0.0.0.0:')
        expected = "not loopback"
    demo.write_text(text)
    result = subprocess.run([*_cli(), "check-config", "-c", str(demo)], capture_output=True, text=True)
    assert result.returncode == 2 and expected in result.stderr, result.stderr


# -- client certificates --------------------------------------------------------------------------
def _pki(directory: Path) -> dict[str, Path]:
    """An operator CA (server and client certificates, one expired) and a rogue CA: test-only keys."""
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.UTC)
    files: dict[str, Path] = {}

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
        files[name] = directory / f"{name}.pem"
        files[name].write_bytes(cert.public_bytes(Encoding.PEM))
        if key is not None:
            files[f"{name}-key"] = directory / f"{name}.key"
            files[f"{name}-key"].write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))

    def ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
                .sign(key, hashes.SHA256()))
        return cert, key

    def leaf(issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], cn: str, usage: x509.ObjectIdentifier,
             days: tuple[int, int] = (-1, 30)) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(issuer[0].subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now + datetime.timedelta(days=days[0]))
                   .not_valid_after(now + datetime.timedelta(days=days[1]))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(issuer[1], hashes.SHA256()), key

    operators = ca("Operators CA")
    rogue = ca("Rogue CA")
    write("operators-ca", operators[0])
    write("server", *leaf(operators, "admin.test", ExtendedKeyUsageOID.SERVER_AUTH))
    write("operator", *leaf(operators, "Operator One", ExtendedKeyUsageOID.CLIENT_AUTH))
    write("expired", *leaf(operators, "Operator Gone", ExtendedKeyUsageOID.CLIENT_AUTH, (-30, -1)))
    write("rogue", *leaf(rogue, "Operator One", ExtendedKeyUsageOID.CLIENT_AUTH))
    return files


def test_admin_api_with_client_certificates(demo: Path, tmp_path: Path) -> None:
    import ssl

    pki = _pki(tmp_path)
    token = (demo.parent / "secrets" / "admin-token").read_text().strip()
    demo.write_text(demo.read_text().replace(
        'token_file = "secrets/admin-token"\n',
        f'token_file = "secrets/admin-token"\ntls_certificate = "{pki["server"]}"\ntls_key = "{pki["server-key"]}"\n'
        f'client_ca = "{pki["operators-ca"]}"\nmax_connections = 8\nrequest_timeout = 3\n'))

    def context(client: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(pki["operators-ca"]))
        if client is not None:
            ctx.load_cert_chain(str(pki[client]), str(pki[f"{client}-key"]))
        return ctx

    with serve(demo) as served:
        admin = served.admin.replace("http://", "https://")
        before = _audit_count(demo)
        for method, path in ROUTES:
            body = {"issuer": "ac-personnes", "serial": "0x01", "reason": "keyCompromise"}
            payload = body if method == "POST" else None
            # no certificate, no token / a wrong token: 401
            for credentials in (None, "wrong"):
                status, _, answer = call(admin, method, path, payload, token=credentials, context=context(None))
                assert status == 401 and answer["error"] == "unauthenticated", (method, path, status)
            # a certificate from another CA, or an expired one: the TLS handshake itself is refused
            for client in ("rogue", "expired"):
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    call(admin, method, path, payload, context=context(client))
        assert _audit_count(demo) == before
        # plain HTTP to the TLS listener gets no API either
        with pytest.raises((ConnectionError, OSError)):
            call(served.admin, "GET", "/api/v1/openapi.json", token=token)
        # valid: the operator's certificate, or the token over TLS
        status, _, answer = call(admin, "GET", "/api/v1/openapi.json", context=context("operator"))
        assert status == 200 and answer["openapi"] == "3.1.0"
        status, _, _ = call(admin, "GET", "/api/v1/openapi.json", token=token, context=context(None))
        assert status == 200
        status, _, answer = call(admin, "GET", "/api/v1/certificates/ac-personnes/0xdeadbeef",
                                 context=context("operator"))
        assert status == 404
        # TLS handshakes never begun count against the cap and end at request_timeout
        host, port = served.admin.removeprefix("http://").split(":")
        stalled = [socket.create_connection((host, int(port)), timeout=10) for _ in range(12)]
        time.sleep(0.5)
        with pytest.raises((ssl.SSLError, ConnectionError)):  # over the cap: closed before any TLS
            call(admin, "GET", "/api/v1/openapi.json", context=context("operator"))
        started = time.monotonic()
        for s in stalled:
            s.settimeout(6)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(1) == b""
        assert time.monotonic() - started < 5
        assert call(admin, "GET", "/api/v1/openapi.json", context=context("operator"))[0] == 200
    actors = {r["actor"] for r in _audit_records(demo) if r["action"] == "api-call"}
    assert actors == {"admin:token", next(a for a in actors if a.startswith("admin:cert:Operator One (serial "))}
    assert token not in served.output  # the token is never logged, even when it is the valid one


def _audit_records(demo: Path) -> list[dict[str, Any]]:
    out = subprocess.run([*_cli(), "audit", "export", "-c", str(demo)], capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_every_error_kind_has_a_problem_type() -> None:
    """Each kind the admin API answers with (ApiError, error_response) has its documented problem type, so
    no error but a plain HTTP one is about:blank."""
    import ast

    from directory.admin.problems import KINDS
    from tests.conftest import ROOT

    used = set()
    for path in (ROOT / "directory" / "admin").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("ApiError", "error_response") and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant)):
                used.add(node.args[1].value)
    assert len(used) >= 10
    assert used - set(KINDS) == set()
