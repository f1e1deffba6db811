"""The TOML configuration, validated at start-up into typed, frozen objects.

Every error names the file, the key and what is wrong, and is raised before anything is touched.
Secrets are never inline: the HSM PIN comes from ``pin_env`` or ``pin_file``, the LDAP password from
``password_file``. Relative paths are resolved against the directory holding the config file; a path
written ``credential:NAME`` is the file NAME in ``$CREDENTIALS_DIRECTORY`` (systemd's ``LoadCredential=``).
"""

from __future__ import annotations

import importlib.util
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from directory.config.admin import AdminConfig, admin_section
from directory.config.check import CheckConfig, check_section
from directory.config.hsm import HsmConfig, hsm_section
from directory.config.http import OCSP_CACHES, HttpConfig, http_section
from directory.config.issuers import IssuerConfig, issuer_section
from directory.config.ldap import LdapConfig, ldap_section
from directory.config.policies import check_unique
from directory.config.reader import ConfigError, Section, readable_file

# psycopg is the `postgresql` extra (its binary wheel bundles libpq and OpenSSL): not there unless asked for
POSTGRESQL_MISSING = ("a postgresql:// registry needs the PostgreSQL driver, which is not installed: "
                      "install annuaire with its extra, pip install 'annuaire[postgresql]'")


@dataclass(frozen=True)
class Config:
    path: Path
    demo: bool
    data_dir: Path
    hsm: HsmConfig
    http: HttpConfig
    registry_url: str
    ldap: LdapConfig | None
    issuers: tuple[IssuerConfig, ...]
    admin: AdminConfig | None = None
    registry_password_file: Path | None = None
    check: CheckConfig = field(default_factory=CheckConfig)

    def registry_location(self) -> str:
        """The registry URL to connect to, with the password from ``password_file`` (never logged)."""
        if self.registry_password_file is None:
            return self.registry_url
        password = quote(self.registry_password_file.read_text().strip(), safe="")
        scheme, rest = self.registry_url.split("://", 1)
        user_host = rest.split("/", 1)[0]
        if "@" not in user_host:
            raise ConfigError(self.path, "registry.url", "password_file needs a user in the URL (USER@HOST)")
        return f"{scheme}://{rest.replace('@', f':{password}@', 1)}"

    @property
    def node(self) -> str:
        """This node among those sharing a registry, stable across restarts: its host name and data folder
        (where the files it serves are)."""
        return f"{socket.gethostname()}:{self.data_dir}"

    def issuer(self, name: str) -> IssuerConfig:
        for issuer in self.issuers:
            if issuer.name == name:
                return issuer
        raise KeyError(name)


def load_config(path: str | Path) -> Config:
    """Read and validate ``path``; raise ``ConfigError`` on the first problem."""
    file = Path(path).resolve()
    try:
        raw = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(file, "-", "file not found") from None
    except OSError as exc:
        raise ConfigError(file, "-", f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "-", f"invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nesting level: thousands of levels end the parser's stack
        raise ConfigError(file, "-", "invalid TOML: nested too deeply") from None

    top = Section(file, "", raw, {"demo", "data_dir", "hsm", "http", "registry", "ldap", "issuers", "admin",
                                  "check"})
    demo = top.get("demo", bool, False)
    data_dir = top.path("data_dir", "data")
    assert data_dir is not None
    hsm = hsm_section(Section(file, "hsm", top.table_of("hsm"), {
        "module", "token_label", "pin_env", "pin_file", "max_concurrent", "softhsm2_conf", "serialize"}))
    http = http_section(Section(file, "http", top.table_of("http"), {
        "listen", "base_url", "max_connections", "idle_timeout", "request_timeout", "workers", "event_loop",
        *OCSP_CACHES}))
    registry = Section(file, "registry", top.table_of("registry"), {"url", "password_file"})
    registry_url = registry.get("url", str, f"sqlite:///{data_dir / 'registry.sqlite3'}")
    registry_password_file = readable_file(registry, "password_file")
    if registry_url.startswith(("postgresql://", "postgres://")):
        if urlsplit(registry_url).password:
            raise registry.error("url", "no password in the URL: use password_file (or libpq's PGPASSFILE)")
        if importlib.util.find_spec("psycopg") is None:
            raise registry.error("url", POSTGRESQL_MISSING)
    elif not registry_url.startswith("sqlite:///"):
        raise registry.error("url", "must be sqlite:///PATH or postgresql://[USER@]HOST[:PORT]/DATABASE[?...]")
    elif registry_password_file is not None:
        raise registry.error("password_file", "only for a postgresql:// registry")
    ldap = None
    if "ldap" in raw:
        ldap = ldap_section(Section(file, "ldap", top.table_of("ldap"), {
            "urls", "bind_dn", "password_file", "suffix", "managed", "person_dn", "structure_dn",
            "reconcile_interval", "start_tls", "tls_ca_file", "timeout", "refusals_fail_readiness"}))
    issuers_raw = raw.get("issuers", [])
    if not isinstance(issuers_raw, list) or not issuers_raw:
        raise ConfigError(file, "issuers", "at least one [[issuers]] table is required")
    issuers = tuple(issuer_section(file, i, table) for i, table in enumerate(issuers_raw))
    check_unique(file, [(i.name, doc) for i in issuers for doc in i.policies])
    names = [i.name for i in issuers]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(file, "issuers", f"duplicate issuer name {name!r}")
    admin = None
    if "admin" in raw:
        admin = admin_section(Section(file, "admin", top.table_of("admin"), {
            "listen", "token_file", "tls_certificate", "tls_key", "client_ca", "max_body", "max_connections",
            "idle_timeout", "request_timeout"}))
    check = check_section(Section(file, "check", top.table_of("check"), set(CheckConfig.__dataclass_fields__)))
    return Config(file, demo, data_dir, hsm, http, registry_url, ldap, issuers, admin, registry_password_file, check)
