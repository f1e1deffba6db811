"""Revocations and releases: the RFC 5280 decision (``directory.revocation``) applied in one transaction.

Inside the write transaction the current state is read, the rules decide, and the new state, its CRL
entry bytes, a status-change row (CRL deltas, OCSP), an LDAP outbox row and the audit record (before
and after) are written together; listeners hear of it after commit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from directory.registry.backends import Conn
from directory.registry.certificates import CertificateRecord, Certificates
from directory.registry.core import UnknownCertificate
from directory.registry.crl_entries import serial_low, store_crl_entry
from directory.revocation import (
    Decision,
    FileOrder,
    RevocationState,
    decide_release,
    decide_revoke,
    file_state_order,
)


@dataclass(frozen=True)
class ChangeOutcome:
    changed: bool
    message: str
    record: CertificateRecord


@dataclass(frozen=True)
class FileStateOutcome:
    """A file's state for one certificate against the registry's: ``order`` says which was newer;
    ``applied`` whether the registry now holds the file's state; ``before`` the registry's state before."""

    order: FileOrder
    applied: bool
    message: str
    before: RevocationState


def _state_json(record: CertificateRecord | None) -> str | None:
    if record is None:
        return None
    return json.dumps({"status": record.status, "reason": record.reason,
                       "revocation_time": record.revocation_time,
                       "invalidity_date": record.invalidity_date}, sort_keys=True)


def _unknown(issuer: str, serial_hex: str) -> UnknownCertificate:
    return UnknownCertificate(f"issuer {issuer} has no certificate with serial 0x{serial_hex}")


class Revocations(Certificates):
    """The status writes: revoke, release a hold."""

    def revoke(self, issuer: str, serial_hex: str, reason: str, at: int | None = None,
               invalidity_date: int | None = None, actor: str = "cli", force: bool = False) -> ChangeOutcome:
        """Apply the RFC 5280 rules (``directory.revocation``) in one transaction."""
        issuer_id = self._issuer_id(issuer)
        now = int(self.clock())
        at = now if at is None else at
        with self._write() as tx:
            current = self._get_tx(tx, issuer_id, serial_hex)
            if current is None:
                if not force:
                    # no hint here: only the caller knows whether the input could have meant another
                    # serial (the CLI suggests --force only when it could not)
                    raise _unknown(issuer, serial_hex)
                decision = decide_revoke(RevocationState("good"), reason, at, invalidity_date, now, None)
                tx.execute("INSERT INTO certificates (issuer_id, serial_hex, status, forced, imported_at, updated_at, "
                           "serial_low) VALUES (?, ?, 'good', 1, ?, ?, ?)",
                           (issuer_id, serial_hex, now, now, serial_low(serial_hex)))
                after = self._apply(tx, issuer_id, serial_hex, decision, now)
                self._audit(tx, actor, "revoke-forced", issuer, serial_hex, None, _state_json(after))
                message = decision.message + " (forced: serial unknown to the registry)"
            else:
                decision = decide_revoke(current.state, reason, at, invalidity_date, now, current.not_before)
                if decision.action == "noop":
                    return ChangeOutcome(False, decision.message, current)
                after = self._apply(tx, issuer_id, serial_hex, decision, now)
                self._audit(tx, actor, "revoke", issuer, serial_hex, _state_json(current), _state_json(after))
                message = decision.message
        assert after is not None
        self._notify(issuer, serial_hex, "revoked")
        return ChangeOutcome(True, message, after)

    def release_hold(self, issuer: str, serial_hex: str, actor: str = "cli") -> ChangeOutcome:
        issuer_id = self._issuer_id(issuer)
        now = int(self.clock())
        with self._write() as tx:
            current = self._get_tx(tx, issuer_id, serial_hex)
            if current is None:
                raise _unknown(issuer, serial_hex)
            decision = decide_release(current.state)
            if decision.action == "noop":
                return ChangeOutcome(False, decision.message, current)
            after = self._apply(tx, issuer_id, serial_hex, decision, now)
            self._audit(tx, actor, "release-hold", issuer, serial_hex, _state_json(current), _state_json(after))
        self._notify(issuer, serial_hex, "released")
        return ChangeOutcome(True, decision.message, after)

    def apply_file_state(self, issuer: str, serial_hex: str, given: RevocationState, actor: str = "import",
                         apply_older: bool = False) -> FileStateOutcome:
        """Bring one certificate to the state a file (``index.txt``) gives, unless the registry changed it
        since (``revocation.file_state_order``): then the registry keeps its newer state, unless
        ``apply_older``. Applied through the RFC 5280 rules (``RevocationRefused``), in one transaction."""
        issuer_id = self._issuer_id(issuer)
        now = int(self.clock())
        with self._write() as tx:
            current = self._get_tx(tx, issuer_id, serial_hex)
            if current is None:
                raise _unknown(issuer, serial_hex)
            last = tx.execute("SELECT MAX(s.at) FROM status_changes s JOIN certificates c ON c.id = s.certificate_id "
                              "WHERE c.issuer_id = ? AND c.serial_hex = ?", (issuer_id, serial_hex)).fetchone()[0]
            order = file_state_order(current.state, last, given)
            if order == "same" or (order == "registry-newer" and not apply_older):
                return FileStateOutcome(order, order == "same", "", current.state)
            if given.status == "good":
                decision = decide_release(current.state)
            else:
                assert given.reason is not None and given.revocation_time is not None
                decision = decide_revoke(current.state, given.reason, given.revocation_time, given.invalidity_date,
                                         now, current.not_before)
            if decision.action == "noop":
                return FileStateOutcome(order, False, decision.message, current.state)
            after = self._apply(tx, issuer_id, serial_hex, decision, now)
            action = ("release-hold" if given.status == "good" else "revoke") + (
                "" if order == "file-newer" else "-older-file-state")
            self._audit(tx, actor, action, issuer, serial_hex, _state_json(current), _state_json(after))
        self._notify(issuer, serial_hex, "released" if after.status == "good" else "revoked")
        return FileStateOutcome(order, True, decision.message, current.state)

    def _apply(self, tx: Conn, issuer_id: int, serial_hex: str, decision: Decision,
               now: int) -> CertificateRecord:
        """Write the new state, its CRL entry bytes (encoded once, here) and a status change record."""
        s = decision.state
        tx.execute("UPDATE certificates SET status = ?, reason = ?, revocation_time = ?, invalidity_date = ?, "
                   "updated_at = ? WHERE issuer_id = ? AND serial_hex = ?",
                   (s.status, s.reason, s.revocation_time, s.invalidity_date, now, issuer_id, serial_hex))
        cid, not_after = tx.execute("SELECT id, not_after FROM certificates WHERE issuer_id = ? AND serial_hex = ?",
                                    (issuer_id, serial_hex)).fetchone()
        store_crl_entry(tx, issuer_id, cid, serial_hex, not_after, s.status, s.revocation_time, s.reason,
                         s.invalidity_date)
        at_ms = int(self.clock() * 1000)
        seq = tx.execute("INSERT INTO status_changes (issuer_id, certificate_id, at, status, at_ms) "
                         "VALUES (?, ?, ?, ?, ?) RETURNING seq", (issuer_id, cid, now, s.status, at_ms)).fetchone()[0]
        self._ldap_enqueue(tx, issuer_id, cid, now, change=(int(seq), at_ms))
        self.backend.notify(tx, "annuaire_changes")  # other nodes' OCSP hear of it at commit
        after = self._get_tx(tx, issuer_id, serial_hex)
        assert after is not None
        return after
