"""An operator's own slapd, set up the way deploy/README tells an operator to: provider.conf's placeholders
filled with sed, the rootdn's password hashed by slappasswd, slaptest, then slapd on a free port."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT, free_port

SUFFIX = "o=sante,c=fr"
MODULE_DIR = next(p for p in (Path("/usr/lib/ldap"), Path("/usr/lib/x86_64-linux-gnu/ldap")) if p.is_dir())


@dataclass
class OperatorSlapd:
    url: str
    admin_dn: str
    admin_password_file: Path
    conf: Path


@contextlib.contextmanager
def operator_slapd(directory: Path) -> Iterator[OperatorSlapd]:
    (directory / "data").mkdir(parents=True)
    secret = directory / "admin-password"
    secret.write_text("operator-root-secret")  # no newline: slappasswd -T and ldapsearch -y read it all
    root_hash = subprocess.run(["slappasswd", "-o", f"module-path={MODULE_DIR}", "-o", "module-load=argon2",
                                "-h", "{ARGON2}", "-T", str(secret)], capture_output=True, text=True,
                               check=True).stdout.strip()
    admin_dn = f"cn=admin,{SUFFIX}"
    values = {"SCHEMA_DIR": "/etc/ldap/schema", "ANNUAIRE_SCHEMA_DIR": str(ROOT / "schema"),
              "MODULE_DIR": str(MODULE_DIR), "RUN_DIR": str(directory), "DATA_DIR": str(directory / "data"),
              "SUFFIX": SUFFIX, "ROOT_DN": admin_dn, "ROOT_PW": root_hash, "SERVICE_DN": f"cn=annuaire,{SUFFIX}",
              "REPLICATOR_DN": f"cn=replicator,{SUFFIX}"}
    sed = [arg for name, value in values.items() for arg in ("-e", f"s|@{name}@|{value}|g")]
    conf = directory / "slapd.conf"
    with open(conf, "w") as out:
        subprocess.run(["sed", *sed, str(ROOT / "deploy" / "slapd" / "provider.conf")], stdout=out, check=True)
    subprocess.run(["slaptest", "-u", "-f", str(conf)], capture_output=True, check=True)
    port = free_port()
    url = f"ldap://127.0.0.1:{port}"
    log = open(directory / "slapd.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(["slapd", "-f", str(conf), "-h", url + "/", "-d", "0"], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert proc.poll() is None and time.monotonic() < deadline, (directory / "slapd.log").read_text()
            time.sleep(0.05)
        yield OperatorSlapd(url, admin_dn, secret, conf)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
