"""``[admin]``: the admin API listener and its credentials (never anonymous, no token in clear off loopback)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from directory.config.reader import Section, listen_address, readable_file, seconds


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


def admin_section(s: Section) -> AdminConfig:
    host, port = listen_address(s, "127.0.0.1:8443")
    token_file, cert, key, client_ca = (readable_file(s, n) for n in ("token_file", "tls_certificate", "tls_key",
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
                       seconds(s, "idle_timeout", AdminConfig.idle_timeout),
                       seconds(s, "request_timeout", AdminConfig.request_timeout))
