"""Helpers for the directory tests: a registry with the demo's certificates, the provider slapd, ldapsearch."""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from directory.config import Config, load_config
from directory.demo import issuance
from directory.ldap.managed import ensure_skeleton, managed_slapd
from directory.ldap.slapd import Slapd
from directory.ldap.sync import DirectorySync
from directory.registry import Registry
from directory.runtime import importer_for, open_config_registry, open_hsm
from tests.conftest import free_port

SUFFIX = "o=sante,c=fr"


@dataclass
class LdapEnv:
    path: Path
    config: Config
    registry: Registry
    slapd: Slapd
    demo: Path

    @property
    def url(self) -> str:
        return self.slapd.config.url

    def sync(self) -> DirectorySync:
        return DirectorySync(self.config, self.registry)

    def import_demo(self) -> None:
        summary = importer_for(self.config, self.registry, actor="test").import_paths([self.demo / "certs"])
        assert not summary.refused, summary.refused

    def restart_slapd(self) -> None:
        self.slapd.start()

    def password(self) -> str:
        assert self.config.ldap is not None
        return self.config.ldap.read_password()


@pytest.fixture()
def ldap_env(private_config: Path, demo_token: Path) -> Iterator[LdapEnv]:
    """An empty registry of our own (the demo's CAs and token), and the provider slapd on a free port."""
    text = re.sub(r'"ldap://127\.0\.0\.1:\d+"', f'"ldap://127.0.0.1:{free_port()}"', private_config.read_text())
    private_config.write_text(text)
    config = load_config(private_config)
    assert config.ldap is not None
    slapd = managed_slapd(config)
    slapd.start()
    ensure_skeleton(slapd, config.ldap)
    registry = open_config_registry(config)
    try:
        yield LdapEnv(private_config, config, registry, slapd, demo_token)
    finally:
        registry.close()
        slapd.stop()


def search(url: str, base: str, filt: str = "(objectClass=*)", *attrs: str, scope: str = "sub",
           bind: tuple[str, str] | None = None) -> dict[str, dict[str, list[bytes]]]:
    """ldapsearch (the OpenLDAP tool, not our client) → {dn: {attribute: [values]}}."""
    auth = ["-D", bind[0], "-w", bind[1]] if bind else []
    result = subprocess.run(["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", url, *auth, "-s", scope,
                             "-b", base, filt, *attrs], capture_output=True)
    if result.returncode == 32:  # no such object
        return {}
    assert result.returncode == 0, result.stderr.decode()
    return parse_ldif(result.stdout)


def parse_ldif(data: bytes) -> dict[str, dict[str, list[bytes]]]:
    entries: dict[str, dict[str, list[bytes]]] = {}
    for block in data.decode().split("\n\n"):
        current: dict[str, list[bytes]] = {}
        dn = None
        for line in block.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _sep, value = line.partition(":")
            raw = base64.b64decode(value[2:]) if value.startswith(": ") else value[1:].encode()
            if name == "dn":
                dn = raw.decode()
            else:
                current.setdefault(name, []).append(raw)
        if dn is not None:
            entries[dn] = current
    return entries


def ldap_tool(tool: str, env: LdapEnv, ldif: str) -> subprocess.CompletedProcess[str]:
    """ldapmodify/ldapadd/ldapdelete as the service DN: edits "by hand"."""
    assert env.config.ldap is not None
    return subprocess.run([tool, "-x", "-H", env.url, "-D", env.config.ldap.bind_dn, "-w", env.password()],
                          input=ldif, capture_output=True, text=True)


def issue(config: Config, issuer: str, subject: x509.Name, profile: str = "encryption",
          emails: tuple[str, ...] = ()) -> bytes:
    """A certificate with any subject, signed by a configured CA through the issuance stub (DER)."""
    hsm = open_hsm(config)
    try:
        ca_cert = config.issuer(issuer).certificate
        spki = ca_cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        ca = issuance.CertificateAuthority(issuer, ca_cert.subject,
                                           hsm.key(config.issuer(issuer).key_label, ca_cert), spki, ca_cert)
        with hsm.admin_session() as session:
            key = issuance.generate_key(session, "ec", None, store=False)
        exts = issuance.end_entity_extensions(ca, key, profile, list(emails), [], [], None, None)
        now = issuance.utcnow()
        cert = issuance.issue(ca, subject, key, now - issuance.days(1), now + issuance.days(30), exts)
        return cert.public_bytes(Encoding.DER)
    finally:
        hsm.close()
