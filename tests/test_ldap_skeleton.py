"""The one DIT skeleton (suffix and three branches): what is missing is added, parents first, once;
checked with ldapsearch."""

from __future__ import annotations

import subprocess

from directory.ldap import skeleton
from directory.ldap.client import LdapClient
from directory.ldap.projection import Layout
from directory.ldap.slapd import Slapd
from tests.slapd import SUFFIX


def _dns(slapd: Slapd) -> set[str]:
    cfg = slapd.config
    found = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", cfg.url, "-D", cfg.root_dn, "-w", cfg.root_password,
                            "-b", SUFFIX, "(objectClass=*)", "1.1"], capture_output=True, text=True)
    assert found.returncode in (0, 32), found.stderr  # 32: no such object (the suffix is not there yet)
    return {line[4:] for line in found.stdout.splitlines() if line.startswith("dn: ")}


def test_the_skeleton_is_completed_once_parents_first(slapd: Slapd) -> None:
    cfg = slapd.config
    add = subprocess.run(["ldapadd", "-x", "-H", cfg.url, "-D", cfg.root_dn, "-w", cfg.root_password],
                         input=f"dn: {SUFFIX}\nobjectClass: organization\no: sante\n", capture_output=True, text=True)
    assert add.returncode == 0, add.stderr
    entries = skeleton.skeleton(Layout(SUFFIX, (), ()))
    with LdapClient([cfg.url], cfg.root_dn, cfg.root_password) as client:
        assert skeleton.ensure(client, entries) == [f"ou={b},{SUFFIX}" for b in ("AC", "Personnes", "Structures")]
        assert skeleton.ensure(client, entries) == []  # idempotent: nothing left to add
    assert _dns(slapd) == {SUFFIX, f"ou=AC,{SUFFIX}", f"ou=Personnes,{SUFFIX}", f"ou=Structures,{SUFFIX}"}


def test_a_dc_suffix_gets_dcobject(slapd: Slapd) -> None:
    (suffix_entry, *_) = skeleton.skeleton(Layout("dc=sante,dc=fr", (), ()))
    assert suffix_entry.attributes == {"objectClass": [b"top", b"dcObject", b"organization"], "dc": [b"sante"],
                                       "o": [b"sante"]}
