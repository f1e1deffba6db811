"""Projected values the directory's syntax refuses are left out, and the rest of the entry lands.

The table of ``directory.ldap.syntax`` is checked against the schema files slapd loads, each rule against
a real slapd (it never accepts a value slapd refuses), and each projected attribute with a certificate
carrying a value its syntax refuses, synchronised and read back with ldapsearch.
"""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from directory.ingest.importer import Importer
from directory.ldap import ber, syntax
from directory.ldap.client import Add, LdapClient, Modify
from directory.ldap.slapd import ANNUAIRE_SCHEMA_DIR, SCHEMA_DIR
from directory.runtime import importer_for, known_issuers
from tests.ldap_env import SUFFIX, LdapEnv, issue, ldap_tool, search

PERSONNES, STRUCTURES = f"ou=Personnes,{SUFFIX}", f"ou=Structures,{SUFFIX}"
EDGES = ["", " ", "  ", "\x00", "a\x00b", "\t", "\x01", "\x7f", "a", "é", "Médecin", "\ufffe", "\U0010ffff",
         "\u200b", "\ufeff", "\u3000", "\u00a0", "\u0301", "a@b.fr", "é@b.fr", "A1 2", "FR", "fr", "123", "a_b",
         "(a)+,-./:?='", "a*b", "a&b", " a ", "x" * 300, "山田"]


def _schema_syntaxes() -> dict[str, str]:
    """attribute (lower case) → syntax OID, from the schema files (SUP chains followed). slapd's built-in
    attributes (cn, name, objectClass) are the commented-out definitions of core.schema."""
    files = [SCHEMA_DIR / "core.schema", SCHEMA_DIR / "cosine.schema", SCHEMA_DIR / "inetorgperson.schema",
             ANNUAIRE_SCHEMA_DIR / "health.schema"]
    text = re.sub(r"^#(?=attributetype|\s)", "", "\n".join(f.read_text() for f in files), flags=re.M)
    text = re.sub(r"\n[ \t]+", " ", text)
    defs: dict[str, tuple[str | None, str | None]] = {}
    for match in re.finditer(r"^attributetype\s+\((.*)\)\s*$", text, re.M | re.I):
        body = match.group(1)
        name = re.search(r"NAME\s+(?:'([^']+)'|\(\s*((?:'[^']+'\s*)+)\))", body)
        assert name is not None, body
        sup, syn = re.search(r"\bSUP\s+(\S+)", body), re.search(r"\bSYNTAX\s+([\d.]+)", body)
        for n in [name.group(1)] if name.group(1) else re.findall(r"'([^']+)'", name.group(2)):
            defs.setdefault(n.lower(), (sup.group(1).lower() if sup else None, syn.group(1) if syn else None))

    def resolve(attribute: str) -> str:
        sup, syn = defs[attribute]
        return syn or resolve(sup or "")

    return {attribute: resolve(attribute) for attribute in defs}


def test_the_syntax_table_is_the_schemas() -> None:
    schemas = _schema_syntaxes()
    for attribute, oid in syntax.SYNTAX_OF.items():
        assert schemas[attribute] == oid, attribute


# -- each rule against slapd -----------------------------------------------------------------------------
# (attribute, entry it is tried on): every attribute of the table, on an entry whose classes allow it
# where one exists (slapd checks the syntax first: 65 objectClassViolation means the value itself passed)
ATTRIBUTES = [(a, "p") for a in ("cn", "sn", "givenName", "title", "o", "ou", "l", "st", "uid", "displayName",
                                  "description", "mail", "healthProfessionalId", "healthProfession",
                                  "healthSpecialty", "c")] + \
             [(a, "s") for a in ("serialNumber", "healthStructureId", "healthStructureIdType")]


@pytest.fixture()
def probe(ldap_env: LdapEnv):  # type: ignore[no-untyped-def]
    """A person and a structure entry to try values on, through our client (one write at a time)."""
    client = LdapClient([ldap_env.url], ldap_env.config.ldap.bind_dn, ldap_env.password())  # type: ignore[union-attr]
    entries = {"p": f"cn=probe,{PERSONNES}", "s": f"cn=probe,{STRUCTURES}"}
    results = client.apply([
        Add(entries["p"], {"objectClass": [b"inetOrgPerson", b"pkiUser", b"healthProfessional"], "cn": [b"probe"],
                           "sn": [b"probe"], "healthProfessionalId": [b"probe"]}),
        Add(entries["s"], {"objectClass": [b"device", b"pkiUser", b"healthStructure"], "cn": [b"probe"]})])
    assert all(r.ok for r in results), results

    def accepts(attribute: str, entry: str, value: bytes) -> bool:
        target = entries[entry]
        result = client.apply([Modify(target, ((ber.MOD_ADD, attribute, (value,)),))])[0]
        if result.ok:
            assert client.apply([Modify(target, ((ber.MOD_DELETE, attribute, (value,)),))])[0].ok
        assert result.code in (0, 21, 65), (attribute, value, result)
        return result.code != 21  # 21 invalidAttributeSyntax; 65: the value passed, the class does not allow it

    yield accepts
    client.close()


def _agrees(accepts, attribute: str, entry: str, value: str) -> None:  # type: ignore[no-untyped-def]
    reason = syntax.problem(attribute, value)
    if reason is None:  # what we send, slapd takes
        assert accepts(attribute, entry, value.encode()), (attribute, value)
        return
    # what slapd takes, we send; but blank values, which we leave out on purpose even where the syntax allows
    # them (a Directory String cannot be empty: that one slapd refuses too)
    on_purpose = not value.strip() and (value or syntax.SYNTAX_OF[attribute.lower()] != syntax.DIRECTORY_STRING)
    if not on_purpose:
        assert not accepts(attribute, entry, value.encode("utf-8", "surrogatepass")), (attribute, value, reason)


def test_each_rule_matches_slapd_on_edge_values(probe) -> None:  # type: ignore[no-untyped-def]
    for attribute, entry in ATTRIBUTES:
        for value in EDGES:
            _agrees(probe, attribute, entry, value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(max_size=12))
def test_each_rule_matches_slapd_on_any_text(probe, value: str) -> None:  # type: ignore[no-untyped-def]
    for attribute, entry in (("title", "p"), ("mail", "p"), ("serialNumber", "s"), ("c", "p")):
        _agrees(probe, attribute, entry, value)


# -- each projected attribute, through a certificate ------------------------------------------------------
def _name(*parts: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value, _validate=False) if oid != NameOID.EMAIL_ADDRESS
                      else x509.NameAttribute(oid, value, _ASN1Type.UTF8String) for oid, value in parts])


SUBJECT_FIELDS = {"C": NameOID.COUNTRY_NAME, "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
                  "L": NameOID.LOCALITY_NAME, "title": NameOID.TITLE, "serialNumber": NameOID.SERIAL_NUMBER,
                  "GN": NameOID.GIVEN_NAME, "SN": NameOID.SURNAME, "CN": NameOID.COMMON_NAME,
                  "emailAddress": NameOID.EMAIL_ADDRESS}


def _person(number: str, **fields: str) -> x509.Name:
    """A professional's subject; ``fields`` replace (or add) values: title='' etc."""
    values = {"C": "FR", "O": "CH DEMO", "OU": "Urgences", "L": "Lyon", "title": "Medecin", "serialNumber": number,
              "GN": "Anne", "SN": f"SYNTAXE{number}", "CN": f"Anne S{number}", **fields}
    return _name(*((SUBJECT_FIELDS[k], v) for k, v in values.items()))


# (subject, profile, SAN mails, attribute whose bad value must be left out, the value, what the entry holds)
PERSON_CASES = [
    ("810000000101", {"title": ""}, ("title", ""), {"title": None, "healthProfession": None}),
    ("810000000102", {"GN": ""}, ("givenName", ""), {"givenName": None}),
    ("810000000103", {"SN": ""}, ("sn", ""), {"sn": [b"Anne S810000000103"]}),  # sn falls back to cn
    ("810000000104", {"O": ""}, ("o", ""), {"o": None}),
    ("810000000105", {"OU": ""}, ("ou", ""), {"ou": None}),
    ("810000000106", {"L": ""}, ("l", ""), {"l": None}),
    ("810000000107", {"emailAddress": "médecin@demo.fr"}, ("mail", "médecin@demo.fr"),
     {"mail": [b"anne@demo.fr"]}),
]


def test_a_value_each_projected_attribute_refuses_is_left_out_and_the_rest_lands(ldap_env: LdapEnv) -> None:
    env = ldap_env
    importer = importer_for(env.config, env.registry, actor="test")  # projected at import, as in production
    for number, fields, _, _ in PERSON_CASES:
        der = issue(env.config, "ac-personnes", _person(number, **fields), emails=("anne@demo.fr",))
        assert importer.import_der(der)[2] == "created"
    # a professional whose identifier is blank: no healthProfessional part, still an entry (template cn={CN})
    blank_id = issue(env.config, "ac-personnes", _person(" ", CN="Anne Sansnumero"), emails=("anne@demo.fr",))
    importer.import_der(blank_id)
    # a structure: an empty O and a repeated OU (slapd refuses an add carrying one value twice)
    structure = issue(env.config, "ac-structures", _name(
        (NameOID.COUNTRY_NAME, "FR"), (NameOID.ORGANIZATION_NAME, ""), (NameOID.ORGANIZATIONAL_UNIT_NAME, "Urgences"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "URGENCES"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "750000001"),
        (NameOID.LOCALITY_NAME, " "), (NameOID.EMAIL_ADDRESS, "accueil@hôpital.fr"),
        (NameOID.COMMON_NAME, "srv.syntaxe.demo.fr")), profile="server-tls", emails=("accueil@demo.fr",))
    Importer(env.registry, known_issuers(env.config), actor="test").import_der(structure)  # projected by the sync
    # no usable name: an empty CN places nothing, and says so
    unnamed = issue(env.config, "ac-personnes", _person("810000000199", CN=""))
    importer.import_der(unnamed)

    report = env.sync().full()
    assert not report.rejected, report.rejected
    assert report.unpublishable == 1
    people = search(env.url, PERSONNES, "(healthProfessionalId=81000000010*)")
    assert len(people) == len(PERSON_CASES)
    for number, _, (attribute, bad), expected in PERSON_CASES:
        entry_dn, entry = next((d, e) for d, e in people.items() if number in d)
        complete = {"cn": [f"Anne S{number}".encode()], "sn": [f"SYNTAXE{number}".encode()], "givenName": [b"Anne"],
                    "title": [b"Medecin"], "o": [b"CH DEMO"], "ou": [b"Urgences"], "l": [b"Lyon"],
                    "mail": [b"anne@demo.fr"], "healthProfessionalId": [number.encode()],
                    "healthIdentifierType": [b"RPPS"], "healthProfession": [b"Medecin"]}
        for name, values in {**complete, **expected}.items():
            assert entry.get(name) == values, (number, name, entry.get(name))
        assert len(entry["userCertificate;binary"]) == 1
        # and the value left out is one the directory refuses
        refused = ldap_tool("ldapmodify", env, f"dn: {entry_dn}\nchangetype: modify\nadd: {attribute}\n"
                                               f"{attribute}:{_ldif(bad)}\n")
        assert refused.returncode == 21 and "invalid per syntax" in refused.stderr, refused.stderr
    nobody = search(env.url, PERSONNES, "(cn=Anne Sansnumero)")
    (entry,) = nobody.values()
    assert b"healthProfessional" not in entry["objectClass"] and "healthProfessionalId" not in entry
    servers = search(env.url, STRUCTURES, "(cn=srv.syntaxe.demo.fr)")
    (server,) = servers.values()
    assert "o" not in server and "l" not in server and server["mail"] == [b"accueil@demo.fr"]
    assert sorted(server["ou"]) == [b"750000001", b"Urgences"] and server["healthStructureId"] == [b"750000001"]
    repeated = ldap_tool("ldapadd", env, f"dn: cn=twice,{STRUCTURES}\nobjectClass: device\ncn: twice\n"
                                         "ou: Urgences\nou: URGENCES\n")
    assert repeated.returncode == 20, repeated.stderr  # what the projection avoided
    assert env.sync().full().writes() == 0 and env.sync().verify().drift.total() == 0
    # every attribute a projection wrote has its syntax in the table
    names: set[str] = set()
    for _, _, attributes, *_ in env.registry.ldap_published(env.sync().layout.digest, int(time.time())):
        names |= {n.lower() for n in json.loads(attributes)}
    assert names - set(syntax.SYNTAX_OF) == set(), names


def _ldif(value: str) -> str:
    """An LDIF value part: ``: `` + base64, or nothing for the empty value."""
    return f": {base64.b64encode(value.encode()).decode()}" if value else ""
