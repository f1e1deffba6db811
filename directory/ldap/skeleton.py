"""The directory's skeleton: the suffix entry and the ``ou=AC``, ``ou=Personnes``, ``ou=Structures`` branches.

One definition, written with our own client, used in three places: every repairing pass of the sync creates
what is missing (an external directory may start empty); the managed slapd creates it at each start as its
root DN, with the service's bind entry (which must exist before the service can bind at all); and
``annuaire ldap bootstrap`` does the same once on an operator's own slapd. Entries that exist are left as
they are.
"""

from __future__ import annotations

from collections.abc import Sequence

from directory.ldap import dn
from directory.ldap.client import ALREADY_EXISTS, SUCCESS, Add, LdapClient, LdapError
from directory.ldap.projection import BRANCHES, Layout

# object classes of the suffix entry, by the attribute of its first RDN
_SUFFIX_CLASSES = {"o": [b"top", b"organization"], "dc": [b"top", b"dcObject", b"organization"],
                   "ou": [b"top", b"organizationalUnit"], "c": [b"top", b"country"]}


def skeleton(layout: Layout) -> list[Add]:
    """The suffix entry, then the three branches (parents first)."""
    attribute, value = dn.parse(layout.suffix)[0][0]
    suffix = {"objectClass": _SUFFIX_CLASSES.get(attribute.lower(), _SUFFIX_CLASSES["o"]),
              attribute: [value.encode()]}
    if attribute.lower() == "dc":
        suffix["o"] = [value.encode()]
    entries = [Add(layout.suffix, suffix)]
    entries += [Add(layout.branch_dn(b), {"objectClass": [b"top", b"organizationalUnit"], "ou": [b.encode()]})
                for b in BRANCHES]
    return entries


def service_entry(bind_dn: str, password_hash: str) -> Add:
    """The entry the service binds as (``[ldap] bind_dn``), with its password as a hash (never cleartext)."""
    attribute, value = dn.parse(bind_dn)[0][0]
    return Add(bind_dn, {"objectClass": [b"top", b"applicationProcess", b"simpleSecurityObject"],
                         attribute: [value.encode()], "userPassword": [password_hash.encode()]})


def ensure(client: LdapClient, entries: Sequence[Add]) -> list[str]:
    """Add the entries that are missing, one at a time in the order given (a parent before its children);
    the DNs added. ``LdapError`` names the first entry the directory refuses (one added meanwhile by
    someone else is not refused)."""
    present = client.read([e.dn for e in entries], ("1.1",))
    added = []
    for entry in entries:
        if present.get(entry.dn) is not None:
            continue
        result = client.apply([entry])[0]
        if result.code not in (SUCCESS, ALREADY_EXISTS):
            raise LdapError(f"cannot create {entry.dn}: {result.text()}")
        added.append(entry.dn)
    return added
