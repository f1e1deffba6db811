"""Where the demo's certificates say their CRLs, deltas, OCSP responder and issuer certificates are.

Shaped like IGC-Santé's certificates: two CRL distribution points, HTTP first, then the CA's directory
entry over LDAP (``?certificaterevocationlist;binary?base?objectClass=pkiCA``); the delta CRL, for an
issuer that publishes deltas, pointed to by freshestCRL over LDAP only (``?deltarevocationlist;binary``);
one OCSP URL for every CA; AIA caIssuers to the issuer's certificate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from directory.publication import (
    ca_certificate_url,
    crl_url,
    full_crl_name,
    ocsp_url,
    partition_crl_name,
    partition_key,
)

LDAP_SUFFIX = "o=sante,c=fr"


@dataclass(frozen=True)
class DemoUrls:
    base: str
    ldap: str
    partitions: int = 0  # CRL partitions of the issuing CAs (0: one CRL each)
    deltas: frozenset[str] = field(default_factory=frozenset)  # issuers publishing delta CRLs

    def crl(self, issuer: str, serial: int | None = None) -> list[str]:
        """CDP URLs: the partition's CRL when the issuer is partitioned, else the full one; then LDAP."""
        http = crl_url(self.base, full_crl_name(issuer))
        if self.partitions and serial is not None:
            http = crl_url(self.base, partition_crl_name(issuer, partition_key(serial) % self.partitions))
        return [http, self._entry(issuer, "certificaterevocationlist;binary")]

    def freshest(self, issuer: str) -> list[str]:
        """freshestCRL URLs: the CA entry's delta over LDAP, for an issuer that publishes deltas."""
        return [self._entry(issuer, "deltarevocationlist;binary")] if issuer in self.deltas else []

    def _entry(self, issuer: str, attribute: str) -> str:
        """An RFC 4516 URL of the attribute on the CA's entry (``cn=ISSUER,ou=AC,SUFFIX``, as the sync names it)."""
        entry = quote(f"cn={issuer},ou=AC,{LDAP_SUFFIX}", safe="=,")
        return f"{self.ldap}/{entry}?{attribute}?base?objectClass=pkiCA"

    def ca_issuers(self, issuer: str) -> str:
        return ca_certificate_url(self.base, issuer)

    @property
    def ocsp(self) -> str:
        return ocsp_url(self.base)
