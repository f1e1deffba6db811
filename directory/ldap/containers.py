"""Intermediate entries: the nodes a DN template's upper RDNs name between an entry and its branch.

A template such as ``cn={CN}+sn={SN}+givenName={GN},title={title}`` places a professional under
``title=Médecin,ou=Personnes,SUFFIX``, the shape of the certificate subjects (``C=FR, title=…, SN+CN+GN``).
Such a node must exist before an entry is added below it, is desired while a desired entry lies below it,
and goes once none does. It holds its naming value and the object class its naming attribute calls for
(``dn.CONTAINER_CLASSES``). The writer adds entries parents first and deletes them children first; an
incremental pass removes the nodes its deletions may have emptied (``prune``), the directory itself
refusing to delete one that still has entries below it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from directory.ldap import dn
from directory.ldap.client import NO_SUCH_OBJECT, NOT_ALLOWED_ON_NON_LEAF, Delete, LdapClient
from directory.ldap.projection import PERSONNES, DesiredEntry, Layout

log = logging.getLogger(__name__)


def above(layout: Layout, entry_dns: Iterable[str]) -> dict[str, DesiredEntry]:
    """The intermediate entries between ``entry_dns`` and their branch, by comparison key (none when no
    template names any: the common case costs nothing)."""
    if not layout.has_containers:
        return {}
    branch_depth = len(dn.parse(layout.branch_dn(PERSONNES)))  # the same for both branches
    out: dict[str, DesiredEntry] = {}
    for entry_dn in entry_dns:
        try:
            rdns = dn.parse(entry_dn)
        except dn.DnError:
            continue
        for i in range(1, len(rdns) - branch_depth):
            node_dn = dn.build(rdns[i:])
            key = dn.key(node_dn)
            if key in out:
                break  # its own ancestors are in already
            out[key] = node(node_dn, rdns[i])
    return out


def node(node_dn: str, rdn: dn.RDN) -> DesiredEntry:
    attribute, value = rdn[0]
    object_class = dn.CONTAINER_CLASSES.get(attribute.lower(), "healthContainer")
    return DesiredEntry(node_dn, {"objectClass": ["top", object_class], attribute: [value]})


def prune(client: LdapClient, node_dns: Iterable[str]) -> int:
    """Delete the given intermediate entries that have nothing below any more, deepest first; how many went.
    One that still has entries is kept (the directory answers notAllowedOnNonLeaf); one the directory
    refuses otherwise is left to the next full pass, which plans it like any entry."""
    deleted = 0
    for node_dn in sorted(set(node_dns), key=lambda d: -d.count(",")):
        result = client.apply([Delete(node_dn)])[0]
        if result.ok:
            deleted += 1
        elif result.code not in (NOT_ALLOWED_ON_NON_LEAF, NO_SUCH_OBJECT):
            log.warning("intermediate entry %s not removed (left to the next full pass): %d %s", node_dn,
                        result.code, result.message)
    return deleted
