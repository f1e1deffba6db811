"""schema/ and deploy/slapd/: both schema forms agree, slaptest accepts the provider, ACLs and indexes work."""

from __future__ import annotations

import base64
import json
import re
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from directory.demo.issuance import DEMO_POLICY_ARC
from directory.ldap.slapd import ANNUAIRE_SCHEMA_DIR, PROVIDER_TEMPLATE, Slapd, SlapdConfig
from tests.conftest import free_port

SUFFIX = "o=sante,c=fr"
SERVICE_DN = f"cn=annuaire,{SUFFIX}"


def test_schema_forms_define_the_same_things() -> None:
    schema = (ANNUAIRE_SCHEMA_DIR / "health.schema").read_text()
    ldif = (ANNUAIRE_SCHEMA_DIR / "health.ldif").read_text()
    body = " ".join(line.strip() for line in schema.splitlines() if not line.startswith("#"))
    definition = r"(?:attributetype|objectclass)\s*(\(.*?\))(?=\s*(?:attributetype|objectclass|$))"
    from_schema = {" ".join(d.split()) for d in re.findall(definition, body)}
    from_ldif = {line.split(": ", 1)[1] for line in ldif.splitlines()
                 if line.startswith(("olcAttributeTypes:", "olcObjectClasses:"))}
    assert from_schema == from_ldif and len(from_schema) == 9


def test_schema_oids_are_under_the_projects_uuid_arc() -> None:
    """2.25.<the documented UUID as an integer> (X.667), no longer inside IANA's enterprise numbers."""
    schema = (ANNUAIRE_SCHEMA_DIR / "health.schema").read_text()
    documented = re.search(r"OIDs: the project's arc (2\.25\.\d+) .*?random UUID as an integer, ([0-9a-f-]{36})",
                           schema, re.DOTALL)
    assert documented is not None
    arc, uuid_text = documented.groups()
    assert arc == f"2.25.{uuid.UUID(uuid_text).int}"
    for text in (schema, (ANNUAIRE_SCHEMA_DIR / "health.ldif").read_text()):
        defined = re.findall(r"\(\s*([0-9.]+)\s+NAME", text)
        assert len(defined) == 9 and all(oid.startswith(f"{arc}.2.") for oid in defined), defined
    assert f"{arc}.1" == DEMO_POLICY_ARC


def test_served_subschema_carries_the_new_oids(provider: Slapd) -> None:
    found = _ldap("ldapsearch", provider, "-LLL", "-o", "ldif-wrap=no", "-s", "base", "-b", "cn=Subschema",
                  "(objectClass=*)", "attributeTypes", "objectClasses")
    assert found.returncode == 0, found.stderr
    names = dict(re.findall(r"\( ([0-9.]+) NAME '(health\w+)'", found.stdout))
    assert len(names) == 9 and all(o.startswith("2.25.63614678800275870086993750832056929307.2.") for o in names)


@pytest.fixture()
def provider(tmp_path: Path) -> Iterator[Slapd]:
    server = Slapd(SlapdConfig(directory=tmp_path / "provider", suffix=SUFFIX, root_dn=f"cn=admin,{SUFFIX}",
                               root_password=secrets.token_urlsafe(12), port=free_port(),
                               template=PROVIDER_TEMPLATE, service_dn=SERVICE_DN))
    server.start()  # runs slaptest on the rendered provider configuration first
    try:
        yield server
    finally:
        server.stop()


def _ldap(tool: str, server: Slapd, *args: str, ldif: str | None = None, dn: str | None = None,
          password: str | None = None) -> subprocess.CompletedProcess[str]:
    auth = ["-D", dn, "-w", password] if dn else []
    return subprocess.run([tool, "-x", "-H", server.config.url, *auth, *args], input=ldif, capture_output=True,
                          text=True)


def test_provider_acls_and_lookups(provider: Slapd, demo_token: Path) -> None:
    root, root_pw = provider.config.root_dn, provider.config.root_password
    service_pw = secrets.token_urlsafe(12)
    manifest = json.loads((demo_token / "certs" / "manifest.json").read_text())
    entry = next(m for m in manifest if m["profile"] == "encryption")
    cert = x509.load_pem_x509_certificate((demo_token / "certs" / entry["file"]).read_bytes())
    rpps = entry["holder"]  # the idNat_PS the card certificate carries in its CN
    mail = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.RFC822Name)[0]
    der64 = base64.b64encode(cert.public_bytes(Encoding.DER)).decode()
    base = (f"dn: {SUFFIX}\nobjectClass: organization\no: sante\n\n"
            f"dn: {SERVICE_DN}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\ncn: annuaire\n"
            f"userPassword: {service_pw}\n\n"
            f"dn: ou=Personnes,{SUFFIX}\nobjectClass: organizationalUnit\nou: Personnes\n")
    assert _ldap("ldapadd", provider, ldif=base, dn=root, password=root_pw).returncode == 0
    person = (f"dn: cn=test,ou=Personnes,{SUFFIX}\nobjectClass: inetOrgPerson\nobjectClass: pkiUser\n"
              f"objectClass: healthProfessional\ncn: test\nsn: TEST\nmail: {mail}\nhealthProfessionalId: {rpps}\n"
              f"healthIdentifierType: RPPS\nuserCertificate;binary:: {der64}\n")
    anonymous = _ldap("ldapadd", provider, ldif=person)
    assert anonymous.returncode != 0  # anonymous cannot write
    by_service = _ldap("ldapadd", provider, ldif=person, dn=SERVICE_DN, password=service_pw)
    assert by_service.returncode == 0, by_service.stderr
    for search in (f"(healthProfessionalId={rpps})", f"(mail={mail})",
                   f'(userCertificate={{ serialNumber {cert.serial_number}, issuer rdnSequence:"'
                   f'{cert.issuer.rfc4514_string()}" }})'):
        found = _ldap("ldapsearch", provider, "-LLL", "-b", SUFFIX, search, "dn")
        assert f"dn: cn=test,ou=Personnes,{SUFFIX}" in found.stdout, (search, found.stderr)
    hidden = _ldap("ldapsearch", provider, "-LLL", "-b", SERVICE_DN, "(objectClass=*)", "userPassword")
    assert "userPassword" not in hidden.stdout  # anonymous never reads a password
    # a non-public attribute is invisible to anonymous readers; another bound DN cannot write either
    added = _ldap("ldapmodify", provider, dn=SERVICE_DN, password=service_pw, ldif=(
        f"dn: cn=test,ou=Personnes,{SUFFIX}\nchangetype: modify\nadd: telephoneNumber\ntelephoneNumber: +33 1 00\n"))
    assert added.returncode == 0, added.stderr
    private = _ldap("ldapsearch", provider, "-LLL", "-b", f"cn=test,ou=Personnes,{SUFFIX}", "(objectClass=*)", "*")
    assert "telephoneNumber" not in private.stdout and "healthProfessionalId" in private.stdout
    other_pw = secrets.token_urlsafe(12)
    other = (f"dn: cn=other,{SUFFIX}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\n"
             f"cn: other\nuserPassword: {other_pw}\n")
    assert _ldap("ldapadd", provider, ldif=other, dn=root, password=root_pw).returncode == 0
    for ldif in (f"dn: cn=test,ou=Personnes,{SUFFIX}\nchangetype: modify\nreplace: mail\nmail: x@y.fr\n",
                 f"dn: cn=intrus,ou=Personnes,{SUFFIX}\nchangetype: add\nobjectClass: device\ncn: intrus\n"):
        refused = _ldap("ldapmodify", provider, ldif=ldif, dn=f"cn=other,{SUFFIX}", password=other_pw)
        assert refused.returncode == 50, refused.stderr  # insufficientAccessRights
