"""``[ldap]``: the directory the sync writes to (URLs, service bind, suffix, DN templates, TLS, timing)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from directory.config.reader import Section, parse_duration
from directory.ldap import dn


@dataclass(frozen=True)
class LdapConfig:
    urls: tuple[str, ...]
    bind_dn: str
    password_file: Path | None
    suffix: str
    managed: bool
    person_dn: tuple[str, ...] = ("cn={CN}+healthProfessionalId={serialNumber}", "cn={CN}")
    structure_dn: tuple[str, ...] = ("cn={CN}",)
    reconcile_interval: int = 3600
    start_tls: bool = False
    tls_ca_file: Path | None = None
    timeout: float = 15.0
    refusals_fail_readiness: bool = True  # a write the directory refuses makes /readyz 503 (else: a warning)

    def read_password(self) -> str:
        if self.password_file is None:
            return ""
        return self.password_file.read_text().strip()


def ldap_section(s: Section) -> LdapConfig:
    urls = s.get("urls", list, required=True)
    if not urls or not all(isinstance(u, str) and u.startswith(("ldap://", "ldaps://", "ldapi://")) for u in urls):
        raise s.error("urls", "must be a non-empty list of ldap://, ldaps:// or ldapi:// URLs")
    password_file = s.path("password_file", None)
    if password_file is not None and not password_file.exists():
        raise s.error("password_file", f"{password_file} does not exist")
    suffix = s.get("suffix", str, "o=sante,c=fr")
    try:
        dn.parse(suffix)
    except dn.DnError as exc:
        raise s.error("suffix", str(exc)) from None
    templates = {}
    for name, default in (("person_dn", LdapConfig.person_dn), ("structure_dn", LdapConfig.structure_dn)):
        value = s.get(name, (list, str), list(default))
        value = [value] if isinstance(value, str) else value
        if not value or not all(isinstance(t, str) for t in value):
            raise s.error(name, "must be a DN template or a non-empty list of them (tried in order)")
        for text in value:
            try:
                dn.DnTemplate.parse(text)
            except dn.DnError as exc:
                raise s.error(name, str(exc)) from None
        templates[name] = tuple(value)
    tls_ca_file = s.path("tls_ca_file", None)
    if tls_ca_file is not None and not tls_ca_file.exists():
        raise s.error("tls_ca_file", f"{tls_ca_file} does not exist")
    timeout = s.get("timeout", (int, float), 15.0)
    if isinstance(timeout, bool) or timeout <= 0:
        raise s.error("timeout", "must be a positive number of seconds")
    try:
        reconcile = parse_duration(s.get("reconcile_interval", (str, int), "1h"))
    except ValueError as exc:
        raise s.error("reconcile_interval", str(exc)) from None
    return LdapConfig(tuple(urls), s.get("bind_dn", str, required=True), password_file, suffix,
                      s.get("managed", bool, False), templates["person_dn"], templates["structure_dn"],
                      reconcile, s.get("start_tls", bool, False), tls_ca_file, float(timeout),
                      s.get("refusals_fail_readiness", bool, True))
