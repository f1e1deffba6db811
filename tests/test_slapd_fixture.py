"""Smoke test of the private slapd fixture with the OpenLDAP command-line tools."""

from __future__ import annotations

import subprocess

from directory.ldap.slapd import Slapd
from tests.slapd import SUFFIX


def test_slapd_accepts_writes_and_answers_ldapsearch(slapd: Slapd) -> None:
    cfg = slapd.config
    ldif = (f"dn: {SUFFIX}\nobjectClass: organization\no: sante\n\n"
            f"dn: ou=AC,{SUFFIX}\nobjectClass: organizationalUnit\nou: AC\n")
    add = subprocess.run(["ldapadd", "-x", "-H", cfg.url, "-D", cfg.root_dn, "-w", cfg.root_password],
                         input=ldif, capture_output=True, text=True)
    assert add.returncode == 0, add.stderr
    found = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", cfg.url, "-b", SUFFIX, "(ou=AC)", "dn"],
                           capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert f"dn: ou=AC,{SUFFIX}" in found.stdout
    anonymous_write = subprocess.run(["ldapadd", "-x", "-H", cfg.url], input=(
        f"dn: ou=Personnes,{SUFFIX}\nobjectClass: organizationalUnit\nou: Personnes\n"),
        capture_output=True, text=True)
    assert anonymous_write.returncode != 0
