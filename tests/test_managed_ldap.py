"""`annuaire serve` with `[ldap] managed = true`: a private slapd from deploy/slapd, started and stopped with it."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

from tests.served import serve


def test_managed_slapd_lives_and_dies_with_the_service(demo: Path) -> None:
    password = (demo.parent / "secrets" / "ldap-password").read_text().strip()
    with serve(demo) as served:
        url = served.ldap_url
        found = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", url, "-b", "o=sante,c=fr",
                                "(objectClass=organizationalUnit)", "ou"], capture_output=True, text=True)
        assert found.returncode == 0, found.stderr
        assert {line.split(": ")[1] for line in found.stdout.splitlines() if line.startswith("ou:")} == \
            {"AC", "Personnes", "Structures"}
        whoami = subprocess.run(["ldapwhoami", "-x", "-H", url, "-D", "cn=annuaire,o=sante,c=fr", "-w", password],
                                capture_output=True, text=True)
        assert whoami.returncode == 0 and "cn=annuaire,o=sante,c=fr" in whoami.stdout
        wrong = subprocess.run(["ldapwhoami", "-x", "-H", url, "-D", "cn=annuaire,o=sante,c=fr", "-w", "nope"],
                               capture_output=True, text=True)
        assert wrong.returncode != 0
        stored = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", url, "-D", "cn=annuaire,o=sante,c=fr", "-w",
                                 password, "-b", "cn=annuaire,o=sante,c=fr", "userPassword"],
                                capture_output=True, text=True)
        assert password not in stored.stdout  # stored salted-hashed, never in clear
        value = base64.b64decode(stored.stdout.split("userPassword:: ", 1)[1].replace("\n ", "").split()[0])
        assert value.startswith(b"{ARGON2}$argon2")  # with slapd's own argon2 module
        conf = (demo.parent / "data" / "ldap" / "slapd.conf").read_text()
        assert re.search(r"^rootpw\s+\{ARGON2\}\$argon2", conf, re.M)  # the root password is a hash there too
        anonymous_write = subprocess.run(["ldapadd", "-x", "-H", url], input=(
            "dn: ou=X,o=sante,c=fr\nobjectClass: organizationalUnit\nou: X\n"), capture_output=True, text=True)
        assert anonymous_write.returncode != 0
    output = served.output
    assert "managed slapd listening on" in output and password not in output
    gone = subprocess.run(["ldapsearch", "-x", "-H", url, "-b", "", "-s", "base"], capture_output=True, text=True)
    assert gone.returncode != 0  # stopped with the service
    # restart on the same data: the skeleton is already there, nothing fails
    with serve(demo):
        pass
