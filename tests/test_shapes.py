"""Certificates shaped like the health sector's, and each family in its directory entry (real slapd, ldapsearch).

The demo's card, mobility, server and organisation certificates are read back with cryptography and openssl;
the directory projection puts each family in the professional's or the structure's entry, found by
identifier, by mail and by certificate (certificateExactMatch); DN templates reproduce a DIT shaped like the
subjects, intermediate entries included (created, kept, pruned).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from directory import certinfo, sector
from directory.config import LdapConfig, load_config
from directory.ldap import containers, dn
from directory.ldap.projection import Layout
from directory.runtime import open_config_registry
from tests.ldap_env import SUFFIX, LdapEnv, search

PERSONNES, STRUCTURES = f"ou=Personnes,{SUFFIX}", f"ou=Structures,{SUFFIX}"


def _manifest(demo: Path) -> list[dict]:
    return json.loads((demo / "certs" / "manifest.json").read_text())


def _cert(demo: Path, entry: dict) -> x509.Certificate:
    return x509.load_pem_x509_certificate((demo / "certs" / entry["file"]).read_bytes())


def _exact(cert: x509.Certificate) -> str:
    return (f'(userCertificate={{ serialNumber {cert.serial_number}, '
            f'issuer rdnSequence:"{cert.issuer.rfc4514_string()}" }})')


def test_card_and_organisation_certificates_have_the_sectors_shapes(demo_pristine: Path) -> None:
    manifest = _manifest(demo_pristine)
    by_profile = {m["profile"]: m for m in reversed(manifest)}  # the first of each
    card = _cert(demo_pristine, by_profile["signature"])
    # C=FR, title=<profession>, then the multi-valued RDN SN + CN=<idNat_PS> + GN (first in RFC 4514 form)
    rdns = list(card.subject.rdns)
    assert [a.oid for a in rdns[0]] == [NameOID.COUNTRY_NAME] and rdns[0].get_attributes_for_oid(
        NameOID.COUNTRY_NAME)[0].value == "FR"
    assert [a.oid for a in rdns[1]] == [NameOID.TITLE]
    assert {a.oid for a in rdns[2]} == {NameOID.SURNAME, NameOID.COMMON_NAME, NameOID.GIVEN_NAME}
    assert card.subject.rfc4514_string().split(",")[0].count("+") == 2
    id_nat = rdns[2].get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert sector.professional_id_type(id_nat) in {"RPPS", "ADELI"} and id_nat == by_profile["signature"]["holder"]
    assert not card.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    title = rdns[1].get_attributes_for_oid(NameOID.TITLE)[0].value
    assert sector.code(card, sector.PRODUCT_CATEGORY) == "00" and sector.code(card, sector.PRODUCT_TYPE) == "00"
    assert sector.PROFESSIONS[sector.code(card, sector.PROFESSION) or ""] == title
    ku = card.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.content_commitment  # signature: nonRepudiation, critical
    mobility = _cert(demo_pristine, by_profile["mobility"])
    assert sector.code(mobility, sector.PRODUCT_CATEGORY) == "03"
    assert mobility.subject.get_attributes_for_oid(NameOID.TITLE)  # a person's subject, like the card's
    organisation = _cert(demo_pristine, by_profile["organisation"])
    assert [a.oid for a in organisation.subject] == [NameOID.COUNTRY_NAME, NameOID.STATE_OR_PROVINCE_NAME,
                                                     NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME,
                                                     NameOID.COMMON_NAME]
    ou = organisation.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
    assert sector.structure_id_type(ou) in {"FINESS", "SIRET"} and ou == by_profile["organisation"]["holder"]
    # the registry classifies every family as the manifest says, with the identifier found in CN
    for entry in manifest:
        info = certinfo.describe(_cert(demo_pristine, entry))
        assert info.profile == entry["profile"], entry
        assert info.professional_id == (entry["holder"] if entry["issuer"] == "ac-personnes" else None)
    # CA names shaped like IGC-Santé's, DEMO all through
    ca = x509.load_pem_x509_certificate((demo_pristine / "ca" / "ac-personnes.pem").read_bytes())
    assert ca.subject.rfc4514_string() == \
        "CN=AC SANTE DEMO PERSONNES,OU=IGC-SANTE DEMO,OU=0002 000000000,O=ANNUAIRE SANTE DEMO,C=FR"


def test_distribution_points_http_then_ldap_and_the_delta_over_ldap(demo_pristine: Path) -> None:
    for entry in _manifest(demo_pristine)[:10]:
        cert = _cert(demo_pristine, entry)
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        urls = [[n.value for n in p.full_name] for p in points]
        issuer = entry["issuer"]
        assert urls == [[f"http://127.0.0.1:18080/crl/{issuer}.crl"],
                        [f"ldap://127.0.0.1:13890/cn={issuer},ou=AC,{SUFFIX}"
                         "?certificaterevocationlist;binary?base?objectClass=pkiCA"]]
        try:
            freshest = [n.value for p in cert.extensions.get_extension_for_class(x509.FreshestCRL).value
                        for n in p.full_name]
        except x509.ExtensionNotFound:
            freshest = []
        # deltas are on for ac-personnes only (the demo's configuration), published over LDAP
        assert freshest == ([f"ldap://127.0.0.1:13890/cn=ac-personnes,ou=AC,{SUFFIX}"
                             "?deltarevocationlist;binary?base?objectClass=pkiCA"] if issuer == "ac-personnes" else [])


def test_openssl_prints_the_multi_valued_rdn_and_the_private_extensions(demo_pristine: Path) -> None:
    entry = next(m for m in _manifest(demo_pristine) if m["profile"] == "authentication")
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-nameopt", "oneline,-esc_msb", "-in",
                           str(demo_pristine / "certs" / entry["file"])], capture_output=True, text=True, check=True)
    subject = next(line for line in text.stdout.splitlines() if line.strip().startswith("Subject:"))
    assert "C = FR, title = " in subject and f"CN = {entry['holder']}" in subject
    assert subject.count(" + ") == 2 and "SN = " in subject and "GN = " in subject
    for oid, code in (("1.2.250.1.71.1.2.5", "00"), ("1.2.250.1.71.1.2.2", "00")):
        assert f"{oid}: \n                ..{code}" in text.stdout, text.stdout
    assert "1.2.250.1.71.1.2.7: " in text.stdout


def test_a_private_extension_is_read_strictly() -> None:
    assert sector.encode_code("03") == b"\x13\x0203"
    for bad in ("", "0 3", "é", "123456789"):
        with pytest.raises(ValueError):
            sector.encode_code(bad)
    for value, expected in ((b"\x13\x0203", "03"), (b"\x0c\x0210", "10"), (b"\x16\x0200", "00"),
                            (b"\x13\x0303", None), (b"\x04\x0203", None), (b"\x13\x02\xc3\xa9", None),
                            (b"\x13\x020 ", None), (b"", None)):
        ext = x509.Extension(sector.PRODUCT_CATEGORY, False, x509.UnrecognizedExtension(sector.PRODUCT_CATEGORY,
                                                                                        value))
        holder = _FakeCert(x509.Extensions([ext]))
        assert sector.code(holder, sector.PRODUCT_CATEGORY) == expected, value  # type: ignore[arg-type]


class _FakeCert:
    """Only ``extensions``: what ``sector.code`` reads."""

    def __init__(self, extensions: x509.Extensions) -> None:
        self.extensions = extensions


def test_each_family_lands_in_its_entry(ldap_env: LdapEnv) -> None:
    env = ldap_env
    env.import_demo()
    report = env.sync().full()
    assert not report.rejected and report.unpublishable == 0, report.as_dict()
    good = _manifest(env.demo)  # all good in this registry of our own (the statuses are the demo's)
    manifest = good
    # the first professional: three card certificates and the software one (mobility), one entry
    holder = manifest[0]["holder"]
    mine = [m for m in good if m["holder"] == holder]
    assert {m["profile"] for m in mine} == {"authentication", "signature", "encryption", "mobility"}
    by_id = search(env.url, SUFFIX, f"(healthProfessionalId={holder})")
    ((entry_dn, entry),) = by_id.items()
    assert entry_dn == f"cn={holder},{PERSONNES}"
    assert sorted(entry["userCertificate;binary"]) == sorted(
        _cert(env.demo, m).public_bytes(Encoding.DER) for m in mine)
    card = _cert(env.demo, mine[0])
    assert entry["sn"] == [card.subject.get_attributes_for_oid(NameOID.SURNAME)[0].value.encode()]
    assert entry["healthIdentifierType"] == [b"RPPS"] and entry["healthProfession"] == entry["title"]
    assert entry["displayName"] == [" ".join(card.subject.get_attributes_for_oid(o)[0].value
                                             for o in (NameOID.GIVEN_NAME, NameOID.SURNAME)).encode()]
    mail = card.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.RFC822Name)[0]
    mobility = _cert(env.demo, next(m for m in mine if m["profile"] == "mobility"))
    for filt in (f"(mail={mail})", _exact(mobility)):
        assert list(search(env.url, SUFFIX, filt)) == [entry_dn], filt
    # an ADELI professional
    adeli = next(m["holder"] for m in good if (m["holder"] or "").startswith("0"))
    ((_, other),) = search(env.url, PERSONNES, f"(healthProfessionalId={adeli})").items()
    assert other["healthIdentifierType"] == [b"ADELI"]
    # the organisation's own certificate: the structure's entry, apart from its servers'
    org = next(m for m in good if m["profile"] == "organisation")
    org_cert = _cert(env.demo, org)
    name = org_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    ((org_dn, org_entry),) = search(env.url, SUFFIX, _exact(org_cert)).items()
    assert dn.key(org_dn) == dn.key(dn.build([(("cn", name),)]) + "," + STRUCTURES)
    assert org_entry["healthStructureId"] == [org["holder"].encode()]
    assert org_entry["healthStructureIdType"] == [b"FINESS"] and org_entry["st"] and org_entry["o"]
    same_structure = search(env.url, STRUCTURES, f"(healthStructureId={org['holder']})")
    servers = [m for m in good if m["holder"] == org["holder"] and m["profile"].startswith("server")]
    assert len(same_structure) == 1 + len(servers)  # the organisation's entry and one per server
    assert env.sync().verify().drift.total() == 0


REAL_DIT = ('person_dn = ["cn={CN}+sn={SN}+givenName={GN},title={title}", "cn={CN}"]\n'
            'structure_dn = ["cn={CN},ou={OU},o={O},st={ST}", "cn={CN}"]\n')


def test_templates_reproduce_a_dit_shaped_like_the_subjects(ldap_env: LdapEnv) -> None:
    env = ldap_env
    env.path.write_text(env.path.read_text().replace("[ldap]\n", "[ldap]\n" + REAL_DIT))
    env.config = load_config(env.path)
    env.import_demo()
    report = env.sync().full()
    assert not report.rejected and report.unpublishable == 0, report.as_dict()
    manifest = _manifest(env.demo)
    card = _cert(env.demo, manifest[0])
    value = {o: card.subject.get_attributes_for_oid(o)[0].value for o in
             (NameOID.COMMON_NAME, NameOID.SURNAME, NameOID.GIVEN_NAME, NameOID.TITLE)}
    expected = dn.build([(("cn", value[NameOID.COMMON_NAME]), ("sn", value[NameOID.SURNAME]),
                          ("givenName", value[NameOID.GIVEN_NAME])), (("title", value[NameOID.TITLE]),)])
    # found by identifier, by mail, by certificate, at the subject-shaped DN
    for filt in (f"(healthProfessionalId={manifest[0]['holder']})", _exact(card)):
        ((found, _),) = search(env.url, SUFFIX, filt).items()
        assert dn.key(found) == dn.key(f"{expected},{PERSONNES}"), found
    titles = search(env.url, PERSONNES, "(objectClass=healthContainer)", scope="one")
    held = {_cert(env.demo, m).subject.get_attributes_for_oid(NameOID.TITLE)[0].value
            for m in manifest if m["issuer"] == "ac-personnes"}
    assert sorted(e["title"][0].decode() for e in titles.values()) == sorted(held) and len(held) == 6
    # structures: cn=<label>,ou=<idNat_Struct>,o=<name>,st=<département>, names with DN specials escaped
    org = next(m for m in manifest if m["profile"] == "organisation" and "BIO+" in _cert(env.demo, m).subject
               .get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value)
    org_cert = _cert(env.demo, org)
    ((org_dn, _),) = search(env.url, SUFFIX, _exact(org_cert)).items()
    parsed = dn.parse(org_dn)
    assert [rdn[0][0].lower() for rdn in parsed[:4]] == ["cn", "ou", "o", "st"] and parsed[2][0][1].endswith("BIO+")
    for attribute, object_class in (("o", b"organization"), ("st", b"locality"), ("ou", b"organizationalUnit")):
        node_dn = dn.build(parsed[["cn", "ou", "o", "st"].index(attribute):])
        ((_, node),) = search(env.url, node_dn, "(objectClass=*)", scope="base").items()
        assert object_class in node["objectClass"], (attribute, node)
    assert env.sync().verify().drift.total() == 0

    # the organisation's three certificates go on hold: its entries go, and the nodes left empty with them
    siblings = [m for m in manifest if m["holder"] == org["holder"]]
    assert len(siblings) == 3
    for m in siblings:
        env.registry.revoke(m["issuer"], m["serial_hex"], "certificateHold", actor="test")
    inc = env.sync().incremental()
    assert inc.mode == "incremental" and not inc.rejected
    st_dn = dn.build(parsed[3:])
    assert search(env.url, st_dn, "(objectClass=*)", scope="base") == {}  # st=Rhône (69) held only this one
    assert env.sync().verify().drift.total() == 0
    # one comes back: its node chain with it
    env.registry.release_hold(org["issuer"], org["serial_hex"], actor="test")
    assert not env.sync().incremental().rejected
    assert list(search(env.url, SUFFIX, _exact(org_cert))) == [org_dn]
    assert env.sync().verify().drift.total() == 0
    # back to the default templates: every node goes, the entries move under their branches
    env.path.write_text(env.path.read_text().replace(REAL_DIT, ""))
    env.config = load_config(env.path)
    moved = env.sync().full()
    assert not moved.rejected
    assert search(env.url, SUFFIX, "(|(objectClass=healthContainer)(objectClass=locality))") == {}
    assert all(d.count(",") == PERSONNES.count(",") + 1 for d in search(env.url, PERSONNES, "(userCertificate=*)"))


def test_intermediate_entries_come_from_the_entries_below_them() -> None:
    layout = Layout.from_config(LdapConfig(("ldap://127.0.0.1:1",), "cn=x", None, SUFFIX, False,
                                           ("cn={CN}+sn={SN}+givenName={GN},title={title}",),
                                           ("cn={CN},ou={OU},o={O},st={ST}",)))
    assert layout.has_containers
    nodes = containers.above(layout, [f"cn=1+sn=A+givenName=B,title=M\\C3\\A9decin,{PERSONNES}",
                                      f"cn=2+sn=C+givenName=D,title=Médecin,{PERSONNES}",
                                      f"cn=h,ou=1440000000,o=CHU\\, DEMO,st=Paris (75),{STRUCTURES}"])
    assert sorted(n.dn for n in nodes.values()) == sorted([
        f"title=Médecin,{PERSONNES}", f"ou=1440000000,o=CHU\\, DEMO,st=Paris (75),{STRUCTURES}",
        f"o=CHU\\, DEMO,st=Paris (75),{STRUCTURES}", f"st=Paris (75),{STRUCTURES}"])
    classes = {n.dn.split("=", 1)[0]: n.attributes["objectClass"][1] for n in nodes.values()}
    assert classes == {"title": "healthContainer", "ou": "organizationalUnit", "o": "organization", "st": "locality"}
    flat = Layout.from_config(LdapConfig(("ldap://127.0.0.1:1",), "cn=x", None, SUFFIX, False))
    assert not flat.has_containers and containers.above(flat, [f"cn=x,{PERSONNES}"]) == {}


def test_migration_12_reads_the_stored_certificates_again(demo: Path) -> None:
    """A registry that imported sector-shaped certificates before certinfo read them (no identifier from the
    CN, every family an "authentication") gets them read again when it opens."""
    manifest = _manifest(demo.parent)
    with sqlite3.connect(demo.parent / "data" / "registry.sqlite3") as db:
        db.execute("UPDATE certificates SET professional_id = NULL, profile = 'authentication' "
                   "WHERE profile NOT IN ('ca', 'ocsp-signing')")
        db.execute("DELETE FROM schema_version WHERE version = 12")
    registry = open_config_registry(load_config(demo))
    try:
        for entry in manifest:
            record = registry.get(entry["issuer"], entry["serial_hex"])
            assert record is not None and record.profile == entry["profile"], entry
            assert record.professional_id == (entry["holder"] if entry["issuer"] == "ac-personnes" else None)
    finally:
        registry.close()
