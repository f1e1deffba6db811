"""``annuaire ldap bootstrap``: readying an operator's own slapd for the service, once.

With the directory's administrator DN and password (given for this run only, never stored), it creates
what the service cannot create for itself: the suffix entry, the three branches (``skeleton``) and the
entry the service binds as (``[ldap] bind_dn``), whose password is the one in ``[ldap] password_file``,
stored as a hash (``{ARGON2}`` from slappasswd, the scheme deploy/slapd/provider.conf loads). Entries that
exist are left as they are; the bind entry's password is set only when the service cannot bind with it.
It ends by binding as the service, as the service will. Connections use ``[ldap]``'s URLs and TLS settings.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from directory.config import LdapConfig
from directory.ldap import ber, skeleton
from directory.ldap.client import LdapClient, LdapError, LdapUnavailable, Modify
from directory.ldap.projection import Layout
from directory.ldap.slapd import SlapdError, hash_password


@dataclass
class BootstrapReport:
    url: str = ""
    added: list[str] = field(default_factory=list)
    password_set: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"url": self.url, "added": self.added, "password_set": self.password_set}


def _client(ldap: LdapConfig, bind_dn: str, password: str) -> LdapClient:
    context = ssl.create_default_context(cafile=str(ldap.tls_ca_file)) if ldap.tls_ca_file else None
    return LdapClient(ldap.urls, bind_dn, password, timeout=ldap.timeout, tls_context=context,
                      start_tls=ldap.start_tls)


def service_can_bind(ldap: LdapConfig) -> bool:
    """Whether the service binds with its configured DN and password (False: refused credentials)."""
    try:
        with _client(ldap, ldap.bind_dn, ldap.read_password()) as client:
            client.connect()
        return True
    except LdapUnavailable:
        raise
    except LdapError:
        return False


def bootstrap(ldap: LdapConfig, admin_dn: str, admin_password: str) -> BootstrapReport:
    """Create what is missing as ``admin_dn``; ``LdapError`` names what the directory refused and why."""
    report = BootstrapReport()
    service_password = ldap.read_password()
    with _client(ldap, admin_dn, admin_password) as client:
        client.connect()
        report.url = client.url or ""
        try:
            entry = skeleton.service_entry(ldap.bind_dn, hash_password(service_password))
        except SlapdError as exc:
            raise LdapError(f"cannot hash the service's password: {exc}") from None
        report.added = skeleton.ensure(client, [*skeleton.skeleton(Layout.from_config(ldap)), entry])
        if ldap.bind_dn not in report.added and not service_can_bind(ldap):
            change = (ber.MOD_REPLACE, "userPassword", tuple(entry.attributes["userPassword"]))
            result = client.apply([Modify(ldap.bind_dn, (change,))])[0]
            if not result.ok:
                raise LdapError(f"cannot set the password of {ldap.bind_dn}: {result.text()}")
            report.password_set = True
        report.password_set = report.password_set or ldap.bind_dn in report.added
    if not service_can_bind(ldap):
        raise LdapError(f"{ldap.bind_dn} still cannot bind with the password of [ldap] password_file "
                        "(does the directory's configuration let it authenticate? see deploy/slapd/provider.conf)")
    return report
