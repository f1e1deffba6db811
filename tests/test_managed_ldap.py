"""`annuaire serve` with `[ldap] managed = true`: a private slapd from deploy/slapd, started and stopped with it."""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import signal
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.conftest import run_cli
from tests.ldap_env import SUFFIX, search
from tests.served import http, serve


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


def _slapd_of(service_pid: int) -> list[int]:
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(service_pid)], capture_output=True,
                         text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "slapd -f" in line]


def _wait(condition, timeout: float = 20.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return value


def test_a_killed_managed_slapd_is_started_again_and_the_sync_converges(demo: Path) -> None:
    manifest = json.loads((demo.parent / "certs" / "manifest.json").read_text())
    victim = next(m for m in manifest if m["issuer"] == "ac-personnes" and m["status"] == "good")
    der = x509.load_pem_x509_certificate((demo.parent / "certs" / victim["file"]).read_bytes()).public_bytes(
        Encoding.DER)

    def published() -> set[bytes] | None:
        """The certificates the directory shows, None while it does not answer."""
        try:
            entries = search(url, f"ou=Personnes,{SUFFIX}", "(userCertificate=*)")
        except AssertionError:
            return None
        return {v for e in entries.values() for v in e["userCertificate;binary"]}

    with serve(demo) as served:
        url = served.ldap_url
        _wait(lambda: der in (published() or ()), what="the first full pass")
        (first,) = _slapd_of(served.proc.pid)
        # run as root, the service runs slapd as an unprivileged user that owns its directory
        user = subprocess.run(["ps", "-o", "user=", "-p", str(first)], capture_output=True, text=True).stdout.strip()
        data = demo.parent / "data" / "ldap"
        if os.geteuid() == 0:
            expected = "openldap" if _exists("openldap") else "nobody"
            assert user == expected and pwd.getpwuid(data.stat().st_uid).pw_name == expected
            assert pwd.getpwuid((data / "data" / "data.mdb").stat().st_uid).pw_name == expected
        else:
            assert user == pwd.getpwuid(os.geteuid()).pw_name
        os.kill(first, signal.SIGKILL)
        # a revocation while the directory is gone
        run_cli("revoke", "-c", str(demo), "--issuer", "ac-personnes", "--serial", f"0x{victim['serial_hex']}",
                "--reason", "keyCompromise", check=True)
        assert http(served.base + "/readyz")[0] == 503
        second = _wait(lambda: [p for p in _slapd_of(served.proc.pid) if p != first], what="slapd started again")
        _wait(lambda: (shown := published()) is not None and der not in shown, what="the revocation in the directory")
        _wait(lambda: http(served.base + "/readyz")[0] == 200, what="ready again")
        verify = run_cli("ldap", "verify", "-c", str(demo))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert second[0] in _slapd_of(served.proc.pid)
    assert "managed slapd exited with -9; restarting" in served.output
    assert "managed slapd running again" in served.output


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False
