"""A revocation always leaves the directory, and a write the directory refuses is never dropped.

Served demo (managed slapd, admin API), checked with ldapsearch, /metrics, /readyz, /status.json (which says
only that the directory lags), the operator view and the admin look-up; and a refusal of each projected
attribute's syntax, with the rest of the entry landing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from directory.config import load_config
from tests.admin_client import call
from tests.ldap_env import SUFFIX, issue, search
from tests.served import http, serve

PERSONNES = f"ou=Personnes,{SUFFIX}"


def _wait(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not met within {timeout} s"
        time.sleep(0.1)


def _metric(base: str, name: str) -> float:
    body = http(base + "/metrics")[2].decode()
    return next((s.value for f in text_string_to_metric_families(body) for s in f.samples if s.name == name), -1.0)


def _holder(demo: Path) -> tuple[x509.Name, list[tuple[str, bytes]]]:
    """A professional of the demo with several good certificates: their subject and (serial, DER) pairs."""
    manifest = json.loads((demo.parent / "certs" / "manifest.json").read_text())
    by_subject: dict[x509.Name, list[tuple[str, bytes]]] = {}
    for m in manifest:
        if m["issuer"] == "ac-personnes" and m["status"] == "good":
            cert = x509.load_pem_x509_certificate((demo.parent / "certs" / m["file"]).read_bytes())
            by_subject.setdefault(cert.subject, []).append((m["serial_hex"], cert.public_bytes(Encoding.DER)))
    return max(by_subject.items(), key=lambda item: len(item[1]))


def test_a_revocation_leaves_the_directory_and_a_refused_write_is_kept_and_shown(demo: Path) -> None:
    config = load_config(demo)
    token = (demo.parent / "secrets" / "admin-token").read_text().strip()
    subject, certificates = _holder(demo)
    assert len(certificates) >= 2 and subject.get_attributes_for_oid(NameOID.TITLE)
    # the CA issues the holder a new certificate whose subject carries an empty title
    empty_title = x509.Name([x509.NameAttribute(a.oid, "") if a.oid == NameOID.TITLE else a for a in subject])
    renewed = issue(config, "ac-personnes", empty_title, profile="signature")
    renewed_serial = format(x509.load_der_x509_certificate(renewed).serial_number, "x")
    with serve(demo) as served:
        admin, url = served.admin, served.ldap_url

        def entry() -> tuple[str, dict[str, list[bytes]]] | None:
            found = search(url, PERSONNES, "(userCertificate=*)")
            return next(((d, e) for d, e in found.items() if certificates[0][1] in e["userCertificate;binary"]), None)

        holder_dn, before = _wait(entry, 15, "the worker's first full pass")
        status, _, answer = call(admin, "POST", "/api/v1/certificates", renewed, token=token,
                                 content_type="application/pkix-cert")
        assert status == 201, answer
        _wait(lambda: renewed in search(url, holder_dn, scope="base")[holder_dn]["userCertificate;binary"],
              what="the new certificate in the directory")
        after = search(url, holder_dn, scope="base")[holder_dn]
        assert after["title"] == before["title"] and b"" not in after["title"]  # the empty value left out
        assert after["healthProfession"] == before["healthProfession"]

        # the holder's first certificate is revoked (keyCompromise): its value leaves the directory
        revoked_serial, revoked = certificates[0]
        status, _, answer = call(admin, "POST", "/api/v1/revocations", token=token, body={
            "issuer": "ac-personnes", "serial": f"0x{revoked_serial}", "reason": "keyCompromise"})
        assert status == 201, answer
        _wait(lambda: revoked not in search(url, holder_dn, scope="base")[holder_dn]["userCertificate;binary"],
              what="the revoked value gone")
        # the worker deletes its outbox rows right after the write: "pending" until then, then "current"
        look_up = f"/api/v1/certificates/ac-personnes/0x{revoked_serial}"
        _wait(lambda: call(admin, "GET", look_up, token=token)[2]["publication"]["ldap"]["state"] == "current",
              5, "the look-up saying current")

        # a write the directory refuses: an entry someone put below the holder makes its delete fail (66)
        added = _ldap_tool(served, "ldapadd", f"dn: cn=note,{holder_dn}\nobjectClass: device\ncn: note\n")
        assert added.returncode == 0, added.stderr
        rest = [s for s, _ in certificates[1:]] + [renewed_serial]
        for serial in rest:
            status, _, answer = call(admin, "POST", "/api/v1/revocations", token=token, body={
                "issuer": "ac-personnes", "serial": f"0x{serial}", "reason": "cessationOfOperation"})
            assert status == 201, answer
        # every certificate value left anyway: removals are written before (and apart from) the delete
        _wait(lambda: not search(url, holder_dn, scope="base")[holder_dn].get("userCertificate;binary"),
              what="every value of the holder gone")
        _wait(lambda: _metric(served.base, "annuaire_ldap_refused") == len(rest), what="the refusal counted")
        assert search(url, holder_dn, scope="base")  # the entry itself is still there (the delete was refused)
        status, _, ready = http(served.base + "/readyz")
        assert status == 503 and "refused" in json.loads(ready)["problems"]["ldap-sync"]
        assert "66" in json.loads(ready)["problems"]["ldap-sync"]
        # the operator view names the refusal; the public page only says the directory lags
        status, _, operations = call(admin, "GET", "/api/v1/operations", token=token)
        health = operations["health"]
        assert not health["ok"] and any(p["part"] == "ldap" and "refused" in p["text"] for p in health["problems"])
        assert operations["directory"]["refused"] == len(rest)
        assert "66" in operations["directory"]["refusals"][0]["reason"]
        public = json.loads(http(served.base + "/status.json")[2])["health"]
        assert not public["ok"] and {"part": "ldap", "code": "ldap", "text": "the directory may not show the latest "
                                     "changes yet"} in public["problems"], public
        assert "refused" not in json.dumps(public) and holder_dn not in json.dumps(public)
        status, _, answer = call(admin, "GET", f"/api/v1/certificates/ac-personnes/0x{rest[0]}", token=token)
        ldap_state = answer["publication"]["ldap"]
        assert ldap_state["state"] == "refused" and "66" in ldap_state["reason"] and ldap_state["attempts"] >= 1
        assert ldap_state["dn"] == holder_dn
        assert _metric(served.base, "annuaire_ldap_sync_failures") == 0  # the directory is up; it refused

        # the obstacle removed: the dead letters are retried (backoff from 5 s) and the entry goes
        removed = _ldap_tool(served, "ldapdelete", f"cn=note,{holder_dn}\n")
        assert removed.returncode == 0, removed.stderr
        _wait(lambda: not search(url, holder_dn, scope="base"), 30, "the entry deleted on retry")
        _wait(lambda: _metric(served.base, "annuaire_ldap_refused") == 0, what="no refusal left")
        assert http(served.base + "/readyz")[0] == 200
        status, _, answer = call(admin, "GET", f"/api/v1/certificates/ac-personnes/0x{rest[0]}", token=token)
        assert answer["publication"]["ldap"]["state"] == "current"
    assert "values left out of" in served.output and "'' (empty)" in served.output


def _ldap_tool(served: Any, tool: str, ldif: str) -> subprocess.CompletedProcess[str]:
    password = (served.config.parent / "secrets" / "ldap-password").read_text().strip()
    return subprocess.run([tool, "-x", "-H", served.ldap_url, "-D", f"cn=annuaire,{SUFFIX}", "-w", password],
                          input=ldif, capture_output=True, text=True)


@pytest.mark.parametrize("fail", [True, False])
def test_refusals_fail_readiness_or_are_a_warning_as_configured(private_config: Path, fail: bool) -> None:
    from aiohttp.test_utils import make_mocked_request

    from directory.ldap.component import LdapSyncComponent
    from directory.registry.dead_letters import LdapRefusal
    from directory.service.app import _readyz, build_service

    if not fail:
        text = private_config.read_text().replace("[ldap]\n", "[ldap]\nrefusals_fail_readiness = false\n", 1)
        private_config.write_text(text)
    service = build_service(load_config(private_config))
    try:
        LdapSyncComponent().watch_refusals(service)

        async def ready() -> tuple[int, dict[str, Any]]:
            response = await _readyz(make_mocked_request("GET", "/readyz", app=service.app))
            return response.status, json.loads(response.body)

        assert asyncio.run(ready()) == (200, {"status": "ready"})
        service.registry.ldap_outbox_settle("x", int(time.time()), refusals=[
            LdapRefusal("modify cn=ac-personnes,ou=AC,o=sante,c=fr: 50 no write access", issuer="ac-personnes")])
        status, body = asyncio.run(ready())
        reason = "1 directory write refused (kept in the outbox, retried): modify cn=ac-personnes,ou=AC,o=sante," \
                 "c=fr: 50 no write access"
        if fail:
            assert status == 503 and body["problems"] == {"ldap-sync": reason}
        else:
            assert status == 200 and body == {"status": "ready", "warnings": {"ldap-sync": reason}}
    finally:
        service.hsm.close()
        service.registry.close()
