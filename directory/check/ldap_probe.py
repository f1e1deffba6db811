"""The directory as a relying application searches it: certificateExactMatch on ``userCertificate``.

ldap3 (not our hand-written codec: the check must not share the code it checks), anonymous by
default like a relying party. Serials are looked up in batches: one search whose filter is an OR of
``(userCertificate={ serialNumber N, issuer rdnSequence:"DN" })`` assertions; each value returned is
parsed to see which of the asked certificates it is.
"""

from __future__ import annotations

import contextlib
import ssl
import warnings
from collections.abc import Sequence

from cryptography import x509

from directory.config import LdapConfig
from directory.ldap.codes import explain

with warnings.catch_warnings():
    # ldap3 2.9.1, its latest release (2021), imports pyasn1's tagMap/typeMap, aliases deprecated since pyasn1
    # 0.6.1 (TAG_MAP/TYPE_MAP) that still work. Pinning pyasn1 below 0.6.1 would bring back the DoS it fixed
    # since (0.6.2-0.6.4), so these two warnings of that one import are silenced instead (pytest: pyproject).
    warnings.filterwarnings("ignore", r"(tagMap|typeMap) is deprecated", DeprecationWarning)
    import ldap3
    from ldap3.core.exceptions import LDAPException
    from ldap3.utils.conv import escape_filter_chars

BATCH = 50  # assertions per search
PAGE = 200
PAGED_OID = "1.2.840.113556.1.4.319"
ATTRIBUTE = "userCertificate;binary"


class LdapTrouble(Exception):
    """The directory could not be searched (down, refused bind, refused search)."""


def exact_assertion(issuer: x509.Name, serial: int) -> str:
    """The GSER CertificateExactAssertion (RFC 4523) a relying application sends, escaped for a filter."""
    dn = issuer.rfc4514_string().replace('"', '""')
    return "(userCertificate=" + escape_filter_chars(f'{{ serialNumber {serial}, issuer rdnSequence:"{dn}" }}') + ")"


class LdapProbe:
    def __init__(self, ldap: LdapConfig, anonymous: bool) -> None:
        self.settings = ldap
        self.anonymous = anonymous
        self._conn: ldap3.Connection | None = None
        self.url: str | None = None

    def _connection(self) -> ldap3.Connection:
        if self._conn is not None:
            return self._conn
        problems = []
        for url in self.settings.urls:
            tls = None
            if url.startswith("ldaps://") or self.settings.start_tls:
                ca = str(self.settings.tls_ca_file) if self.settings.tls_ca_file else None
                tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=ca)
            server = ldap3.Server(url, get_info=ldap3.NONE, tls=tls, connect_timeout=max(1, int(self.settings.timeout)))
            user, password = (None, None) if self.anonymous else (self.settings.bind_dn,
                                                                  self.settings.read_password())
            try:
                conn = ldap3.Connection(server, user=user, password=password, client_strategy=ldap3.SAFE_SYNC,
                                        receive_timeout=max(1, int(self.settings.timeout)), raise_exceptions=False,
                                        read_only=True)
                if url.startswith("ldap://") and self.settings.start_tls:
                    conn.open()
                    conn.start_tls()
                if not conn.bind():
                    answer = conn.result or {}
                    said = explain(answer.get("result", -1), answer.get("message") or "", user or "anonymous")
                    problems.append(f"{url}: bind refused: {said}")
                    continue
            except (LDAPException, OSError) as exc:
                problems.append(f"{url}: {type(exc).__name__}: {exc}")
                continue
            self._conn, self.url = conn, url
            return conn
        raise LdapTrouble("; ".join(problems) or "no directory URL")

    def present(self, issuer: x509.Name, serials: Sequence[int]) -> set[int]:
        """Which of ``serials`` (of ``issuer``) a certificateExactMatch search finds under the suffix."""
        found: set[int] = set()
        issuer_der = issuer.public_bytes()
        wanted = set(serials)
        ordered = sorted(wanted)
        for start in range(0, len(ordered), BATCH):
            terms = "".join(exact_assertion(issuer, s) for s in ordered[start:start + BATCH])
            for entry in self._search(f"(|{terms})"):
                for value in _values(entry.get("raw_attributes", {})):
                    try:
                        cert = x509.load_der_x509_certificate(value)
                        if cert.serial_number in wanted and cert.issuer.public_bytes() == issuer_der:
                            found.add(cert.serial_number)
                    except ValueError:
                        continue  # a value that is no certificate is not any of ours
        return found

    def _search(self, filt: str) -> list[dict]:
        """Every entry the filter matches (paged, RFC 2696: a server size limit does not hide one)."""
        out: list[dict] = []
        cookie: bytes | None = None
        while True:
            try:
                conn = self._connection()
                _, result, entries, _ = conn.search(self.settings.suffix, filt, search_scope=ldap3.SUBTREE,
                                                     attributes=[ATTRIBUTE], paged_size=PAGE, paged_cookie=cookie)
            except (LDAPException, OSError) as exc:
                self.close()
                raise LdapTrouble(f"{self.url}: {type(exc).__name__}: {exc}") from None
            if result.get("result") not in (0, 32):  # 32: the suffix itself is missing: nothing there
                self.close()
                said = explain(result.get("result", -1), result.get("message") or "", self.settings.suffix)
                raise LdapTrouble(f"{self.url}: search refused: {said}")
            out += [e for e in entries if e.get("type") == "searchResEntry"]
            control = (result.get("controls") or {}).get(PAGED_OID)
            cookie = control["value"]["cookie"] if control else None
            if not cookie:
                return out

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(LDAPException, OSError):
                self._conn.unbind()
            self._conn = None


def _values(attributes: dict[str, list[bytes]]) -> list[bytes]:
    return [v for name, values in attributes.items() if name.lower().startswith("usercertificate") for v in values]
