"""The TOML configuration, validated at start-up into typed, frozen objects.

Every error names the file, the key and what is wrong, and is raised before anything is touched.
Secrets are never inline: the HSM PIN comes from ``pin_env`` or ``pin_file``, the LDAP password from
``password_file``. Relative paths are resolved against the directory holding the config file; a path
written ``credential:NAME`` is the file NAME in ``$CREDENTIALS_DIRECTORY`` (systemd's ``LoadCredential=``).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from cryptography import x509

from directory.hsm.algorithms import SignatureAlgorithm
from directory.ldap import dn

ISSUER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
CREDENTIAL = "credential:"


class ConfigError(Exception):
    """A configuration problem: ``file: key: what is wrong``."""

    def __init__(self, file: Path | str, key: str, problem: str) -> None:
        super().__init__(f"{file}: {key}: {problem}")
        self.file = str(file)
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class HsmConfig:
    module: str
    token_label: str
    pin_env: str | None
    pin_file: Path | None
    max_concurrent: int
    softhsm2_conf: Path | None
    serialize: bool = False  # one call at a time into the module (a module known not to take concurrent calls)

    def read_pin(self) -> str:
        """The PIN, read when needed (not kept in the config object)."""
        if self.pin_env:
            return os.environ[self.pin_env]
        assert self.pin_file is not None
        return self.pin_file.read_text().strip()


@dataclass(frozen=True)
class HttpConfig:
    host: str
    port: int
    base_url: str
    max_connections: int = 4096  # past it, new connections get 503 (file descriptors, memory)
    idle_timeout: float = 15.0  # seconds: idle keep-alive, and incomplete request headers (slow clients)
    request_timeout: float = 10.0  # seconds from a request's first byte to its last (headers and body)
    # bytes; LRU caches that OCSP traffic fills (request bytes -> parsed CertID; live answers other than SHA-1)
    ocsp_request_cache: int = 16 * 1024 * 1024
    ocsp_answer_cache: int = 32 * 1024 * 1024


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


@dataclass(frozen=True)
class AdminConfig:
    """The admin API listener (``[admin]``): its own port, loopback by default, never anonymous.

    Credentials: a client certificate issued by ``client_ca`` (mTLS, needs ``tls_certificate`` and
    ``tls_key`` for the listener itself), a bearer token read from ``token_file``, or both (either
    one suffices). The token is read when checked, never kept in this object or logged.
    """

    host: str
    port: int
    token_file: Path | None
    tls_certificate: Path | None
    tls_key: Path | None
    client_ca: Path | None
    max_body: int = 1024 * 1024
    max_connections: int = 64  # its own cap: operators' tools, not the public
    idle_timeout: float = 15.0
    request_timeout: float = 60.0  # TLS handshake, headers and body (up to max_body) of one request

    @property
    def tls(self) -> bool:
        return self.tls_certificate is not None

    def read_token(self) -> str:
        if self.token_file is None:
            return ""
        return self.token_file.read_text().strip()


@dataclass(frozen=True)
class CrlConfig:
    """CRL publication of one issuer (``[issuers.crl]``); durations in seconds."""

    interval: int = 3600
    validity: int = 7 * 86400
    overlap: int = 86400
    on_revocation_delay: int | None = 60
    delta: bool = False
    delta_interval: int = 900
    delta_validity: int = 86400
    partitions: int = 0
    keep_expired: bool = False
    archive: int = 10
    issuing_distribution_point: bool = False


@dataclass(frozen=True)
class OcspConfig:
    """OCSP for one issuer (``[issuers.ocsp]``); present means served, absent means ``unauthorized``."""

    signer_certificate_path: Path | None
    signer_certificate: x509.Certificate | None = field(repr=False, compare=False)
    signer_key_label: str | None = None
    validity: int = 4 * 86400
    nonce: str = "echo"
    unknown_status: str = "unknown"
    max_cert_ids: int = 10
    live_concurrency: int = 4


@dataclass(frozen=True)
class CheckConfig:
    """The publication checker (``[check]``): a relying party against our own public channels.

    Durations in seconds. ``full_cycle``: every certificate is checked at least once in it (the rolling
    sample); ``recent``: how long a certificate whose status changed is checked at every ``interval``.
    A channel may disagree with the registry for its allowance after a change (OCSP ``ocsp_grace``, CRLs
    their rebuild delay + ``crl_margin``, the directory ``ldap_grace``) before it is a mismatch.
    ``url``: where to reach the public channels (default: this node's own listener).
    """

    enabled: bool = True
    interval: int = 10
    full_cycle: int = 86400
    recent: int = 600
    fail_readiness: bool = False
    ocsp_grace: int = 5
    crl_margin: int = 15
    ldap_grace: int = 30
    url: str | None = None
    ldap_bind: str = "anonymous"  # or "service": bind as [ldap] bind_dn (a directory closed to anonymous reads)


@dataclass(frozen=True)
class IssuerConfig:
    name: str
    certificate_path: Path
    certificate: x509.Certificate = field(repr=False, compare=False)
    key_label: str
    signature_algorithm: SignatureAlgorithm | None
    crl: CrlConfig = field(default_factory=CrlConfig)
    ocsp: OcspConfig | None = None


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

    def issuer(self, name: str) -> IssuerConfig:
        for issuer in self.issuers:
            if issuer.name == name:
                return issuer
        raise KeyError(name)


class _Section:
    """Typed access to one TOML table that remembers its dotted key for error messages."""

    def __init__(self, file: Path, prefix: str, table: Mapping[str, Any], allowed: set[str]) -> None:
        self.file, self.prefix, self.table = file, prefix, table
        for key in table:
            if key not in allowed:
                raise ConfigError(file, self.key(key), f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), problem)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ..., required: bool = False) -> Any:
        if name not in self.table:
            if required or default is ...:
                raise self.error(name, "missing")
            return default
        value = self.table[name]
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise self.error(name, f"must be {expected}, got {type(value).__name__} {value!r}")
        return value

    def path(self, name: str, default: Any = ...) -> Path | None:
        value = self.get(name, str, default)
        if value is None:
            return None
        if value.startswith(CREDENTIAL):
            return self._credential(name, value[len(CREDENTIAL):])
        p = Path(value)
        return p if p.is_absolute() else (self.file.parent / p)

    def _credential(self, name: str, credential: str) -> Path:
        """``credential:NAME``: a file systemd copied for this service only (``LoadCredential=NAME:PATH``),
        so the secret itself can stay readable by root alone."""
        if not credential or credential in (".", "..") or "/" in credential or "\0" in credential \
                or len(credential) > 255:
            raise self.error(name, f"{CREDENTIAL}{credential!r}: a credential name is one file name")
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise self.error(name, f"{CREDENTIAL}{credential} needs $CREDENTIALS_DIRECTORY, set by systemd with "
                                   f"LoadCredential={credential}:FILE (outside systemd: the folder holding the file)")
        return Path(directory) / credential

    def table_of(self, name: str) -> Mapping[str, Any]:
        value = self.table.get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, "must be a table")
        return value


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

    top = _Section(file, "", raw, {"demo", "data_dir", "hsm", "http", "registry", "ldap", "issuers", "admin",
                                          "check"})
    demo = top.get("demo", bool, False)
    data_dir = top.path("data_dir", "data")
    assert data_dir is not None
    hsm = _hsm(_Section(file, "hsm", top.table_of("hsm"), {
        "module", "token_label", "pin_env", "pin_file", "max_concurrent", "softhsm2_conf", "serialize"}))
    http = _http(_Section(file, "http", top.table_of("http"), {"listen", "base_url", "max_connections",
                                                               "idle_timeout", "request_timeout", *_OCSP_CACHES}))
    registry = _Section(file, "registry", top.table_of("registry"), {"url", "password_file"})
    registry_url = registry.get("url", str, f"sqlite:///{data_dir / 'registry.sqlite3'}")
    registry_password_file = _readable(registry, "password_file")
    if registry_url.startswith(("postgresql://", "postgres://")):
        if urlsplit(registry_url).password:
            raise registry.error("url", "no password in the URL: use password_file (or libpq's PGPASSFILE)")
    elif not registry_url.startswith("sqlite:///"):
        raise registry.error("url", "must be sqlite:///PATH or postgresql://[USER@]HOST[:PORT]/DATABASE[?...]")
    elif registry_password_file is not None:
        raise registry.error("password_file", "only for a postgresql:// registry")
    ldap = None
    if "ldap" in raw:
        ldap = _ldap(_Section(file, "ldap", top.table_of("ldap"), {
            "urls", "bind_dn", "password_file", "suffix", "managed", "person_dn", "structure_dn",
            "reconcile_interval", "start_tls", "tls_ca_file", "timeout", "refusals_fail_readiness"}))
    issuers_raw = raw.get("issuers", [])
    if not isinstance(issuers_raw, list) or not issuers_raw:
        raise ConfigError(file, "issuers", "at least one [[issuers]] table is required")
    issuers = tuple(_issuer(file, i, table) for i, table in enumerate(issuers_raw))
    names = [i.name for i in issuers]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(file, "issuers", f"duplicate issuer name {name!r}")
    admin = None
    if "admin" in raw:
        admin = _admin(_Section(file, "admin", top.table_of("admin"), {
            "listen", "token_file", "tls_certificate", "tls_key", "client_ca", "max_body", "max_connections",
            "idle_timeout", "request_timeout"}))
    check = _check(_Section(file, "check", top.table_of("check"), set(CheckConfig.__dataclass_fields__)))
    return Config(file, demo, data_dir, hsm, http, registry_url, ldap, issuers, admin, registry_password_file, check)


def _check(s: _Section) -> CheckConfig:
    values: dict[str, Any] = {}
    for key in ("enabled", "fail_readiness"):
        if key in s.table:
            values[key] = s.get(key, bool)
    for key, low, high in (("interval", 1, 3600), ("full_cycle", 1, 365 * 86400), ("recent", 0, 86400),
                           ("ocsp_grace", 0, 3600), ("crl_margin", 0, 86400), ("ldap_grace", 0, 86400)):
        if key in s.table:
            try:
                values[key] = parse_duration(s.table[key])
            except ValueError as exc:
                raise s.error(key, str(exc)) from None
            if not low <= values[key] <= high:
                raise s.error(key, f"must be between {low} and {high} seconds")
    if "url" in s.table:
        url = s.get("url", str).rstrip("/")
        if not url.startswith(("http://", "https://")) or not urlsplit(url).hostname:
            raise s.error("url", "must be an http:// or https:// URL")
        values["url"] = url
    if "ldap_bind" in s.table:
        values["ldap_bind"] = s.get("ldap_bind", str)
        if values["ldap_bind"] not in ("anonymous", "service"):
            raise s.error("ldap_bind", 'must be "anonymous" (a relying party) or "service" ([ldap] bind_dn)')
    check = CheckConfig(**values)
    if check.full_cycle < check.interval:
        raise s.error("full_cycle", "must be at least interval")
    return check


def _hsm(s: _Section) -> HsmConfig:
    module = s.get("module", str, required=True)
    if not os.path.exists(module):
        raise s.error("module", f"PKCS#11 module {module} does not exist")
    pin_env = s.get("pin_env", str, None)
    pin_file = s.path("pin_file", None)
    if (pin_env is None) == (pin_file is None):
        raise s.error("pin_env", "exactly one of pin_env or pin_file must be set (the PIN is never inline)")
    if pin_env is not None and not os.environ.get(pin_env):
        raise s.error("pin_env", f"environment variable {pin_env} is not set or empty")
    if pin_file is not None:
        try:
            if not pin_file.read_text().strip():
                raise s.error("pin_file", f"{pin_file} is empty")
        except OSError as exc:
            raise s.error("pin_file", f"cannot read {pin_file}: {exc.strerror}") from None
    max_concurrent = s.get("max_concurrent", int, 2)
    if not 1 <= max_concurrent <= 256:
        raise s.error("max_concurrent", "must be between 1 and 256")
    conf = s.path("softhsm2_conf", None)
    if conf is not None and not conf.exists():
        raise s.error("softhsm2_conf", f"{conf} does not exist")
    return HsmConfig(module, s.get("token_label", str, required=True), pin_env, pin_file, max_concurrent, conf,
                     s.get("serialize", bool, False))


def _listen(s: _Section, default: str) -> tuple[str, int]:
    listen = s.get("listen", str, default)
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise s.error("listen", f"must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port_text)


def _readable(s: _Section, name: str) -> Path | None:
    path = s.path(name, None)
    if path is not None:
        try:
            if not path.read_bytes().strip():
                raise s.error(name, f"{path} is empty")
        except OSError as exc:
            raise s.error(name, f"cannot read {path}: {exc.strerror}") from None
    return path


def _admin(s: _Section) -> AdminConfig:
    host, port = _listen(s, "127.0.0.1:8443")
    token_file, cert, key, client_ca = (_readable(s, n) for n in ("token_file", "tls_certificate", "tls_key",
                                                                  "client_ca"))
    if token_file is None and client_ca is None:
        raise s.error("token_file", "set token_file, client_ca or both: the admin API never runs without "
                                    "credentials")
    if (cert is None) != (key is None):
        raise s.error("tls_certificate", "tls_certificate and tls_key go together")
    if client_ca is not None and cert is None:
        raise s.error("client_ca", "client certificates need TLS: set tls_certificate and tls_key")
    if cert is None and host not in ("127.0.0.1", "::1", "localhost"):
        raise s.error("listen", f"{host} is not loopback: a bearer token must not cross the network in clear "
                                "text; set tls_certificate and tls_key")
    max_body = s.get("max_body", int, AdminConfig.max_body)
    if not 1024 <= max_body <= 64 * 1024 * 1024:
        raise s.error("max_body", "must be between 1024 and 67108864 bytes")
    max_connections = s.get("max_connections", int, AdminConfig.max_connections)
    if not 1 <= max_connections <= 100_000:
        raise s.error("max_connections", "must be between 1 and 100000")
    return AdminConfig(host, port, token_file, cert, key, client_ca, max_body, max_connections,
                       _seconds(s, "idle_timeout", AdminConfig.idle_timeout),
                       _seconds(s, "request_timeout", AdminConfig.request_timeout))


def _seconds(s: _Section, name: str, default: float) -> float:
    value = s.get(name, (int, float), default)
    if isinstance(value, bool) or not 1 <= value <= 3600:
        raise s.error(name, "must be between 1 and 3600 seconds")
    return float(value)


def _http(s: _Section) -> HttpConfig:
    host, port = _listen(s, "127.0.0.1:8080")
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    base_url = s.get("base_url", str, f"http://{listen}").rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise s.error("base_url", "must start with http:// or https://")
    max_connections = s.get("max_connections", int, HttpConfig.max_connections)
    if not 1 <= max_connections <= 1_000_000:
        raise s.error("max_connections", "must be between 1 and 1000000")
    caches: dict[str, int] = {}
    for key in _OCSP_CACHES:
        if key in s.table:
            try:
                caches[key] = parse_size(s.table[key])
            except ValueError as exc:
                raise s.error(key, str(exc)) from None
            if caches[key] > 1 << 36:
                raise s.error(key, "must be at most 64GiB")
    return HttpConfig(host, port, base_url, max_connections, _seconds(s, "idle_timeout", HttpConfig.idle_timeout),
                      _seconds(s, "request_timeout", HttpConfig.request_timeout), **caches)


_OCSP_CACHES = ("ocsp_request_cache", "ocsp_answer_cache")
_SIZE_UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like ``512KiB``, ``16MiB``, ``1GiB``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value[-3:] in _SIZE_UNITS and value[:-3].isdigit():
        return int(value[:-3]) * _SIZE_UNITS[value[-3:]]
    raise ValueError(f"{value!r} is not a size (bytes, or 512KiB, 16MiB, 1GiB)")


def _ldap(s: _Section) -> LdapConfig:
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


def _issuer(file: Path, index: int, table: Any) -> IssuerConfig:
    if not isinstance(table, dict):
        raise ConfigError(file, f"issuers[{index}]", "must be a table")
    s = _Section(file, f"issuers[{index}]", table,
                 {"name", "certificate", "key_label", "signature_algorithm", "crl", "ocsp"})
    name = s.get("name", str, required=True)
    if not ISSUER_NAME.match(name):
        raise s.error("name", f"{name!r} must be lower-case letters, digits and dashes (it appears in URLs)")
    s.prefix = f"issuers[{name}]"
    cert_path = s.path("certificate")
    assert cert_path is not None
    try:
        data = cert_path.read_bytes()
    except OSError as exc:
        raise s.error("certificate", f"cannot read {cert_path}: {exc.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise s.error("certificate", f"{cert_path} is not an X.509 certificate: {exc}") from None
    algorithm = None
    if "signature_algorithm" in table:
        try:
            algorithm = SignatureAlgorithm.parse(s.get("signature_algorithm", str))
        except ValueError as exc:
            raise s.error("signature_algorithm", str(exc)) from None
    crl = _crl(_Section(file, f"issuers[{name}].crl", s.table_of("crl"), set(CrlConfig.__dataclass_fields__)))
    ocsp = None
    if "ocsp" in table:
        ocsp = _ocsp(_Section(file, f"issuers[{name}].ocsp", s.table_of("ocsp"), {
            "signer_certificate", "signer_key_label", "validity", "nonce", "unknown_status", "max_cert_ids",
            "live_concurrency"}), cert)
    return IssuerConfig(name, cert_path, cert, s.get("key_label", str, required=True), algorithm, crl, ocsp)


def _load_certificate(s: _Section, key: str, path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise s.error(key, f"cannot read {path}: {exc.strerror}") from None
    try:
        return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise s.error(key, f"{path} is not an X.509 certificate: {exc}") from None


def _ocsp(s: _Section, ca: x509.Certificate) -> OcspConfig:
    """A delegated responder (certificate + key label, issued by this CA for id-kp-OCSPSigning) or the CA key."""
    cert_path = s.path("signer_certificate", None)
    label = s.get("signer_key_label", str, None)
    if (cert_path is None) != (label is None):
        raise s.error("signer_key_label", "signer_certificate and signer_key_label go together "
                                          "(omit both to sign with the CA key)")
    signer = None
    if cert_path is not None:
        signer = _load_certificate(s, "signer_certificate", cert_path)
        try:
            signer.verify_directly_issued_by(ca)
        except Exception:
            raise s.error("signer_certificate", "not issued by this issuer's CA certificate") from None
        try:
            eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = []
        if x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise s.error("signer_certificate", "lacks extendedKeyUsage id-kp-OCSPSigning")
    validity = OcspConfig.validity
    if "validity" in s.table:
        try:
            validity = parse_duration(s.table["validity"])
        except ValueError as exc:
            raise s.error("validity", str(exc)) from None
        if validity < 60:
            raise s.error("validity", "must be at least 60 seconds")
    nonce = s.get("nonce", str, "echo")
    if nonce not in ("echo", "ignore"):
        raise s.error("nonce", 'must be "echo" or "ignore"')
    unknown = s.get("unknown_status", str, "unknown")
    if unknown not in ("unknown", "revoked"):
        raise s.error("unknown_status", 'must be "unknown" or "revoked" (RFC 6960 §2.2)')
    max_ids = s.get("max_cert_ids", int, 10)
    live = s.get("live_concurrency", int, 4)
    if not 1 <= max_ids <= 100:
        raise s.error("max_cert_ids", "must be between 1 and 100")
    if not 1 <= live <= 1024:
        raise s.error("live_concurrency", "must be between 1 and 1024")
    return OcspConfig(cert_path, signer, label, validity, nonce, unknown, max_ids, live)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> int:
    """Seconds from an integer or a string like ``90s``, ``15m``, ``6h``, ``7d``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 15m, 6h, 7d")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return value
    if isinstance(value, str) and len(value) > 1 and value[-1] in _UNITS and value[:-1].isdigit():
        return int(value[:-1]) * _UNITS[value[-1]]
    raise ValueError(f"{value!r} is not a duration (seconds, or 90s, 15m, 6h, 7d)")


def _crl(s: _Section) -> CrlConfig:
    defaults = CrlConfig()
    values: dict[str, object] = {}
    if s.table.get("on_revocation_delay") is False:  # explicitly off: only the schedule rebuilds
        values["on_revocation_delay"] = None
    for key in ("interval", "validity", "overlap", "delta_interval", "delta_validity", "on_revocation_delay"):
        if key in s.table and key not in values:
            try:
                values[key] = parse_duration(s.table[key])
            except ValueError as exc:
                raise s.error(key, str(exc)) from None
    for key in ("delta", "keep_expired", "issuing_distribution_point"):
        if key in s.table:
            values[key] = s.get(key, bool)
    for key, low, high in (("partitions", 0, 4096), ("archive", 0, 10000)):
        if key in s.table:
            value = s.get(key, int)
            if not low <= value <= high:
                raise s.error(key, f"must be between {low} and {high}")
            values[key] = value
    crl = CrlConfig(**{**defaults.__dict__, **values})  # type: ignore[arg-type]
    if crl.validity <= crl.overlap:
        raise s.error("overlap", f"must be shorter than validity ({crl.validity}s)")
    if crl.interval <= 0 or crl.interval > crl.validity - crl.overlap:
        raise s.error("interval", "must be positive and at most validity - overlap, or CRLs could expire")
    if crl.delta and not 0 < crl.delta_interval < crl.delta_validity:
        raise s.error("delta_interval", "must be positive and shorter than delta_validity")
    return crl
