"""Issuers and certificates: registration (idempotent), import, and the reads every part makes.

An import is one transaction per batch: a new row is ``created`` with its LDAP outbox row and audit
record; identical bytes are ``present``; other bytes under the same issuer and serial are a
``conflict`` and change nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from directory.certinfo import CertificateInfo, readable_dn
from directory.registry.audit import AuditTrail
from directory.registry.backends import Conn
from directory.registry.crl_entries import serial_low
from directory.registry.ldap_outbox import LdapOutbox
from directory.revocation import RevocationState


@dataclass(frozen=True)
class CertificateRecord:
    issuer: str
    serial_hex: str
    subject_dn: str | None
    emails: tuple[str, ...]
    dns_names: tuple[str, ...]
    professional_id: str | None
    not_before: int | None
    not_after: int | None
    der: bytes | None
    sha256: str | None
    profile: str | None
    status: str
    revocation_time: int | None
    reason: str | None
    invalidity_date: int | None
    forced: bool

    @property
    def state(self) -> RevocationState:
        return RevocationState(self.status, self.reason, self.revocation_time, self.invalidity_date)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer, "serial_hex": self.serial_hex, "subject": readable_dn(self.subject_dn),
            "emails": list(self.emails), "dns_names": list(self.dns_names),
            "professional_id": self.professional_id, "not_before": self.not_before,
            "not_after": self.not_after, "sha256": self.sha256, "profile": self.profile,
            "status": self.status, "revocation_time": self.revocation_time, "reason": self.reason,
            "invalidity_date": self.invalidity_date, "forced": self.forced,
        }


ImportResult = Literal["created", "present", "conflict", "completed"]


@dataclass(frozen=True)
class ImportOutcome:
    result: ImportResult
    message: str


_COLUMNS = (
    "i.name, c.serial_hex, c.subject_dn, c.emails, c.dns_names, c.professional_id, c.not_before, c.not_after, "
    "c.der, c.sha256, c.profile, c.status, c.revocation_time, c.reason, c.invalidity_date, c.forced"
)


def _record(row: tuple[Any, ...]) -> CertificateRecord:
    return CertificateRecord(
        issuer=row[0], serial_hex=row[1], subject_dn=row[2],
        emails=tuple(x for x in row[3].split("\n") if x), dns_names=tuple(x for x in row[4].split("\n") if x),
        professional_id=row[5], not_before=row[6], not_after=row[7],
        der=bytes(row[8]) if row[8] is not None else None, sha256=row[9], profile=row[10], status=row[11],
        revocation_time=row[12], reason=row[13], invalidity_date=row[14], forced=bool(row[15]),
    )


class Certificates(AuditTrail, LdapOutbox):
    """Issuers and certificates; each new row's audit record and outbox row go in its transaction."""

    def ensure_issuer(self, name: str, subject_der: bytes, certificate_der: bytes, actor: str = "config") -> None:
        """Record a configured issuer (idempotent; a renewed CA certificate replaces the stored one)."""
        with self._write() as tx:
            row = tx.execute("SELECT id, certificate_der FROM issuers WHERE name = ?", (name,)).fetchone()
            if row is None:
                new_id = tx.execute("INSERT INTO issuers (name, subject_der, certificate_der) VALUES (?, ?, ?) "
                                    "RETURNING id", (name, subject_der, certificate_der)).fetchone()[0]
                self._ldap_enqueue(tx, new_id, None, int(self.clock()))
                self._audit(tx, actor, "issuer-added", name, None, None, hashlib.sha256(certificate_der).hexdigest())
            elif bytes(row[1]) != certificate_der:
                tx.execute("UPDATE issuers SET subject_der = ?, certificate_der = ? WHERE id = ?",
                           (subject_der, certificate_der, row[0]))
                self._ldap_enqueue(tx, row[0], None, int(self.clock()))
                self._audit(tx, actor, "issuer-certificate-changed", name, None,
                            hashlib.sha256(bytes(row[1])).hexdigest(), hashlib.sha256(certificate_der).hexdigest())

    def issuer_names(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT name FROM issuers ORDER BY name")]

    def get(self, issuer: str, serial_hex: str) -> CertificateRecord | None:
        return self._get_tx(self._conn(), self._issuer_id(issuer), serial_hex)

    def _get_tx(self, tx: Conn, issuer_id: int, serial_hex: str) -> CertificateRecord | None:
        row = tx.execute(f"SELECT {_COLUMNS} FROM certificates c JOIN issuers i ON i.id = c.issuer_id "
                         "WHERE c.issuer_id = ? AND c.serial_hex = ?", (issuer_id, serial_hex)).fetchone()
        return _record(row) if row else None

    def iter_certificates(self, issuer: str | None = None) -> Iterator[CertificateRecord]:
        sql = f"SELECT {_COLUMNS} FROM certificates c JOIN issuers i ON i.id = c.issuer_id"
        args: tuple[Any, ...] = ()
        if issuer is not None:
            sql += " WHERE c.issuer_id = ?"
            args = (self._issuer_id(issuer),)
        for row in self._conn().execute(sql + " ORDER BY c.id", args):
            yield _record(row)

    def counts(self) -> dict[str, dict[str, int]]:
        """{issuer: {status: n}} for every configured issuer (zeros included)."""
        result = {name: {"good": 0, "revoked": 0, "on-hold": 0} for name in self.issuer_names()}
        for name, status, n in self._conn().execute(
                "SELECT i.name, c.status, COUNT(*) FROM certificates c JOIN issuers i ON i.id = c.issuer_id "
                "GROUP BY i.name, c.status"):
            result[name][status] = n
        return result

    def status_of(self, issuer: str, serial_hex: str) -> tuple[str, int | None, str | None] | None:
        """(status, revocation_time, reason) of one certificate, or None when the registry never saw it."""
        row = self._conn().execute("SELECT status, revocation_time, reason FROM certificates WHERE issuer_id = ? "
                                   "AND serial_hex = ?", (self._issuer_id(issuer), serial_hex)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def serials(self, issuer: str) -> list[str]:
        """Serials of the certificates we hold (forced placeholders without a certificate included)."""
        return [r[0] for r in self._conn().execute("SELECT serial_hex FROM certificates WHERE issuer_id = ?",
                                                   (self._issuer_id(issuer),))]

    def import_certificates(self, issuer: str, infos: Iterable[CertificateInfo],
                            actor: str = "import") -> list[ImportOutcome]:
        """Insert certificates in one transaction; each gets its own outcome, conflicts change nothing."""
        issuer_id = self._issuer_id(issuer)
        items = list(infos)
        now = int(self.clock())
        with self._write() as tx:
            outcomes = [self._import_one(tx, issuer, issuer_id, info, actor, now) for info in items]
        for outcome, info in zip(outcomes, items, strict=True):
            if outcome.result in ("created", "completed"):
                self._notify(issuer, info.serial_hex, "imported")
        return outcomes

    def _import_one(self, tx: Conn, issuer: str, issuer_id: int, info: CertificateInfo,
                    actor: str, now: int) -> ImportOutcome:
        row = tx.execute("SELECT sha256, forced FROM certificates WHERE issuer_id = ? AND serial_hex = ?",
                         (issuer_id, info.serial_hex)).fetchone()
        fields = (info.subject_dn, "\n".join(info.emails), "\n".join(info.dns_names), info.professional_id,
                  info.not_before, info.not_after, info.der, info.sha256, info.profile)
        if row is None:
            new_id = tx.execute(
                "INSERT INTO certificates (issuer_id, serial_hex, subject_dn, emails, dns_names, professional_id, "
                "not_before, not_after, der, sha256, profile, status, imported_at, updated_at, serial_low) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'good', ?, ?, ?) RETURNING id",
                (issuer_id, info.serial_hex, *fields, now, now, serial_low(info.serial_hex))).fetchone()[0]
            self._ldap_enqueue(tx, issuer_id, new_id, now)
            self._audit(tx, actor, "import", issuer, info.serial_hex, None, info.sha256)
            return ImportOutcome("created", "imported")
        if row[0] == info.sha256:
            return ImportOutcome("present", "already present")
        if row[0] is None:
            # A serial revoked with --force before we had its certificate: keep the revocation, add the bytes.
            tx.execute("UPDATE certificates SET subject_dn = ?, emails = ?, dns_names = ?, professional_id = ?, "
                       "not_before = ?, not_after = ?, der = ?, sha256 = ?, profile = ?, updated_at = ? "
                       "WHERE issuer_id = ? AND serial_hex = ?", (*fields, now, issuer_id, info.serial_hex))
            tx.execute("UPDATE crl_entries SET not_after = ? WHERE issuer_id = ? AND certificate_id = "
                       "(SELECT id FROM certificates WHERE issuer_id = ? AND serial_hex = ?)",
                       (info.not_after, issuer_id, issuer_id, info.serial_hex))
            cid = tx.execute("SELECT id FROM certificates WHERE issuer_id = ? AND serial_hex = ?",
                             (issuer_id, info.serial_hex)).fetchone()[0]
            self._ldap_enqueue(tx, issuer_id, cid, now)
            self._audit(tx, actor, "import-completes-forced", issuer, info.serial_hex, None, info.sha256)
            return ImportOutcome("completed", "imported; it was already revoked with --force, revocation kept")
        return ImportOutcome(
            "conflict",
            f"conflict: issuer {issuer} serial 0x{info.serial_hex} is already registered with other bytes "
            f"(sha256 {row[0][:16]}...); nothing changed",
        )
