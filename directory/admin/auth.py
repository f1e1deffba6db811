"""Who is calling the admin API: a client certificate from the operator CA, or the bearer token.

A client certificate is checked by TLS itself (chain to ``client_ca``, validity, clientAuth purpose):
one from another CA, or an expired one, never completes the handshake, so no request exists to answer.
Without a certificate, the ``Authorization: Bearer`` token is compared in constant time with the one
in ``token_file`` (read at each check: rotating the file needs no restart). Neither is ever logged.
"""

from __future__ import annotations

import hmac
import ssl

from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import NameOID

from directory.config import AdminConfig


def server_context(config: AdminConfig) -> ssl.SSLContext | None:
    """The listener's TLS context (None: plain HTTP on loopback with a token)."""
    if not config.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(config.tls_certificate), str(config.tls_key))
    if config.client_ca is not None:
        context.load_verify_locations(cafile=str(config.client_ca))
        # optional: a caller with the token but no certificate still gets an answer (401 without the token)
        context.verify_mode = ssl.CERT_OPTIONAL if config.token_file is not None else ssl.CERT_REQUIRED
    return context


class Credentials:
    def __init__(self, config: AdminConfig) -> None:
        self.config = config

    def identify(self, request: web.Request) -> str | None:
        """The actor recorded in the audit trail (``admin:cert:SUBJECT`` / ``admin:token``), or None."""
        if self.config.client_ca is not None and request.transport is not None:
            ssl_object = request.transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if der:  # only present once verified against client_ca
                return f"admin:cert:{_who(x509.load_der_x509_certificate(der))}"
        if self.config.token_file is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            given = given.strip()
            # a token is printable ASCII (RFC 6750 b64token); other bytes can match nothing, and are not
            # even encoded for the comparison (a non-ASCII header would not survive it)
            if scheme.lower() == "bearer" and given and given.isascii() and given.isprintable():
                try:
                    expected = self.config.read_token()
                except OSError:
                    return None
                if expected and hmac.compare_digest(given.encode(), expected.encode()):
                    return "admin:token"
        return None


def _who(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else cert.subject.rfc4514_string()
    return f"{name} (serial {cert.serial_number:x})"
