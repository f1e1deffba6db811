"""The sync's pure parts: DN escaping and templates, BER checked by pyasn1 (ldap3's codec), the diff."""

from __future__ import annotations

import random

import pytest
from ldap3.protocol.rfc4511 import LDAPMessage
from pyasn1.codec.ber import decoder

from directory.ldap import ber, dn
from directory.ldap.client import Entry
from directory.ldap.diff import digest, plan, removal
from directory.ldap.projection import DesiredEntry

TRICKY = ['a,b', 'a+b', 'a"b', 'a\\b', '<a>', 'a;b', 'a=b', '#a', ' a', 'a ', ' ', 'é ü 山', 'a\x00b', '\\2c']


@pytest.mark.parametrize("value", TRICKY)
def test_escaped_values_parse_back_to_themselves(value: str) -> None:
    text = dn.build([(("cn", value),), (("ou", "Personnes"),)]) + ",o=sante,c=fr"
    assert dn.parse(text) == [(("cn", value),), (("ou", "Personnes"),), (("o", "sante"),), (("c", "fr"),)]


def test_random_values_round_trip() -> None:
    rng = random.Random(5280)
    alphabet = ',+"\\<>;=# abcé山\x00'
    for _ in range(2000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        rdn = (("cn", value), ("uid", value[::-1]))
        assert dn.parse(dn.build([rdn]))[0] == rdn


def test_keys_compare_like_the_directory() -> None:
    assert dn.key("CN=Jean  Dupont+healthProfessionalId=8101,OU=Personnes,O=Sante,C=FR") == \
        dn.key("healthprofessionalid=8101+cn=jean dupont,ou=personnes,o=sante,c=fr")
    assert dn.key("cn=a\\2cb,o=x") == dn.key("cn=a\\,b,o=x")  # hex and character escapes are the same value
    assert dn.key("cn=a\\,b,o=x") != dn.key("cn=a,b=,o=x")


def test_templates_are_validated_and_never_inject() -> None:
    template = dn.DnTemplate.parse("cn={CN}+healthProfessionalId={serialNumber}")
    rdns = template.render({"CN": "x,ou=AC", "serialNumber": "8+1"})
    assert rdns == [(("cn", "x,ou=AC"), ("healthProfessionalId", "8+1"))]
    assert dn.build(rdns) == "cn=x\\,ou\\=AC+healthProfessionalId=8\\+1"
    assert template.render({"CN": "x"}) is None  # a missing attribute: the next template is tried
    # upper RDNs name intermediate entries: one attribute each, of a type that can name one
    shaped = dn.DnTemplate.parse("cn={CN}+sn={SN}+givenName={GN},title={title}")
    rdns = shaped.render({"CN": "810100000012", "SN": "DUPONT", "GN": "Zoë", "title": "Médecin,ou=AC"})
    assert dn.build(rdns) == "cn=810100000012+sn=DUPONT+givenName=Zoë,title=Médecin\\,ou\\=AC"
    for bad in ("cn=Fixed", "cn={CN},ou=X", "{CN}", "cn={CN}+", "cn={CN},ou={OU}+o={O}", "cn={CN},uid={UID}"):
        with pytest.raises(dn.DnError):
            dn.DnTemplate.parse(bad)


def test_ber_requests_decode_with_ldap3s_pyasn1_specification() -> None:
    add = ber.message(7, ber.add_request("cn=é,o=x", {"objectClass": [b"top", b"device"], "cn": ["é".encode()],
                                                     "userCertificate;binary": [b"\x30\x03\x02\x01\x01" * 40]}))
    decoded, rest = decoder.decode(add, asn1Spec=LDAPMessage())
    assert rest == b""
    assert int(decoded["messageID"]) == 7
    request = decoded["protocolOp"]["addRequest"]
    assert bytes(request["entry"]) == "cn=é,o=x".encode()
    attrs = {str(a["type"]): [bytes(v) for v in a["vals"]] for a in request["attributes"]}
    assert attrs["userCertificate;binary"] == [b"\x30\x03\x02\x01\x01" * 40]

    modify = ber.message(300, ber.modify_request("cn=a,o=x", [(ber.MOD_DELETE, "userCertificate;binary", (b"v",)),
                                                             (ber.MOD_ADD, "mail", (b"a@b", b"c@d"))]))
    decoded, _ = decoder.decode(modify, asn1Spec=LDAPMessage())
    changes = decoded["protocolOp"]["modifyRequest"]["changes"]
    assert [int(c["operation"]) for c in changes] == [1, 0]
    assert [bytes(v) for v in changes[1]["modification"]["vals"]] == [b"a@b", b"c@d"]

    search = ber.message(2**31 - 2, ber.search_request("o=x", ber.SCOPE_SUBTREE, ["*"]),
                         [ber.paged_control(2000, b"cookie")])
    decoded, _ = decoder.decode(search, asn1Spec=LDAPMessage())
    assert int(decoded["messageID"]) == 2**31 - 2
    assert str(decoded["protocolOp"]["searchRequest"]["filter"]["present"]) == "objectClass"
    assert str(decoded["controls"][0]["controlType"]) == ber.PAGED_RESULTS_OID

    deleted, _ = decoder.decode(ber.message(1, ber.delete_request("cn=a,o=x")), asn1Spec=LDAPMessage())
    assert bytes(deleted["protocolOp"]["delRequest"]) == b"cn=a,o=x"


def test_long_lengths() -> None:
    for n in (0, 127, 128, 255, 256, 65535, 65536, 2**24):
        encoded = ber.length(n)
        assert ber.header(b"\x04" + encoded + b"\x00" * n, 0) == (4, 1 + len(encoded), 1 + len(encoded) + n)


def _desired(*certs: bytes, mail: str = "a@b.fr") -> DesiredEntry:
    entry = DesiredEntry("cn=A,ou=Personnes,o=x", {"objectClass": ["top", "inetOrgPerson", "pkiUser"], "cn": ["A"],
                                                   "sn": ["A"], "mail": [mail]})
    for n, cert in enumerate(certs):
        entry.certificates[digest(cert)] = n
    return entry


def _actual(*certs: bytes, mail: str = "a@b.fr") -> Entry:
    return Entry("CN=A,ou=Personnes,o=x", {"objectClass": [b"top", b"inetOrgPerson", b"pkiUser"], "cn": [b"A"],
                                           "sn": [b"A"], "mail": [mail.encode()],
                                           "userCertificate;binary": list(certs)})


def test_diff_writes_nothing_for_an_unchanged_entry() -> None:
    assert plan(_desired(b"c1", b"c2"), _actual(b"c2", b"c1", mail="A@B.FR")) is None


def test_diff_removes_exactly_the_revoked_value_apart_from_other_changes() -> None:
    p = plan(_desired(b"c1", b"c3"), _actual(b"c1", b"c2", b"c3"))
    assert p is not None and p.kind == "modify" and not p.add_certificates and not p.has_other_writes()
    assert p.changes == [] and removal(p) == (ber.MOD_DELETE, "userCertificate;binary", (b"c2",))
    # a new mail beside it: the removal stays a write of its own, the mail goes with the other changes
    p = plan(_desired(b"c1", mail="new@b.fr"), _actual(b"c1", b"c2"))
    assert p is not None and p.removals == (b"c2",) and p.has_other_writes()
    assert all(name != "userCertificate;binary" for _, name, _ in p.changes)
    # an entry that must go loses its certificate values first
    gone = plan(None, _actual(b"c1", b"c2"))
    assert gone is not None and gone.kind == "delete" and gone.removals == (b"c1", b"c2")


def test_diff_adds_missing_values_and_fixes_attributes() -> None:
    p = plan(_desired(b"c1", b"c2", mail="new@b.fr"), _actual(b"c1"))
    assert p is not None and p.add_certificates == [1]
    assert (ber.MOD_DELETE, "mail", (b"a@b.fr",)) in p.changes and (ber.MOD_ADD, "mail", (b"new@b.fr",)) in p.changes
    extra = _actual(b"c1")
    extra.attributes["description"] = [b"by hand"]
    p = plan(_desired(b"c1"), extra)
    assert p is not None and p.changes == [(ber.MOD_DELETE, "description", ())]


def test_diff_adds_and_deletes_whole_entries() -> None:
    added = plan(_desired(b"c1"), None)
    assert added is not None and added.kind == "add" and added.add_certificates == [0]
    assert added.attributes["mail"] == [b"a@b.fr"]
    deleted = plan(None, _actual(b"c1"))
    assert deleted is not None and deleted.kind == "delete" and deleted.dn == "CN=A,ou=Personnes,o=x"
    assert plan(None, None) is None


@pytest.mark.parametrize("reply", [b"\x30\x80\x02\x01\x01", b"\x30\x85\x00\x00\x00\x00\x01", b"\x04\x03abc",
                                   b"\x30\x03\x02\x01\x00", b""])
def test_a_server_speaking_nonsense_is_unavailable_not_a_crash(reply: bytes) -> None:
    """Indefinite or absurd lengths, a non-LDAPMessage, an unsolicited notice (id 0), a closed socket."""
    import socket
    import threading

    from directory.ldap.client import LdapClient, LdapUnavailable

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        if reply:
            conn.sendall(reply)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = LdapClient([f"ldap://127.0.0.1:{listener.getsockname()[1]}"], "cn=x", "secret", timeout=2)
    with pytest.raises(LdapUnavailable):
        client.connect()
    thread.join(5)
    listener.close()


def test_diff_adds_a_binary_attribute_the_entry_lacks() -> None:
    """A CA entry written before its delta CRL existed gets the delta added (it once raised KeyError)."""
    desired = DesiredEntry("cn=ac,ou=AC,o=sante,c=fr", {"objectClass": ["top", "pkiCA"], "cn": ["ac"]},
                           binary={"certificateRevocationList;binary": [b"full"],
                                   "deltaRevocationList;binary": [b"delta"]})
    actual = Entry("cn=ac,ou=AC,o=sante,c=fr", {"objectClass": [b"top", b"pkiCA"], "cn": [b"ac"],
                                                "certificateRevocationList;binary": [b"full"]})
    p = plan(desired, actual)
    assert p is not None and p.changes == [(ber.MOD_REPLACE, "deltaRevocationList;binary", (b"delta",))]
