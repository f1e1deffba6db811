"""What the checker compares: a certificate's status as a channel states it, and a disagreement found.

A status is ``GOOD`` or ``Revoked(time, reason, invalidity)``; a hold is ``Revoked`` with reason
``certificateHold``. ``unspecified`` and an absent reason are the same statement.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from directory.inputs import format_time
from directory.registry.checks import CertificateFacts

CHANNELS = ("ocsp", "crl", "ldap")

REASON_FLAGS: dict[x509.ReasonFlags, str] = {
    x509.ReasonFlags.unspecified: "unspecified",
    x509.ReasonFlags.key_compromise: "keyCompromise",
    x509.ReasonFlags.ca_compromise: "cACompromise",
    x509.ReasonFlags.affiliation_changed: "affiliationChanged",
    x509.ReasonFlags.superseded: "superseded",
    x509.ReasonFlags.cessation_of_operation: "cessationOfOperation",
    x509.ReasonFlags.certificate_hold: "certificateHold",
    x509.ReasonFlags.privilege_withdrawn: "privilegeWithdrawn",
    x509.ReasonFlags.aa_compromise: "aACompromise",
    x509.ReasonFlags.remove_from_crl: "removeFromCRL",
}


@dataclass(frozen=True)
class Revoked:
    time: int
    reason: str | None  # None: no reason given (same as unspecified)
    invalidity: int | None = None  # only CRL entries carry it


GOOD = "good"
Status = str | Revoked  # GOOD or Revoked


def reason_of(flag: x509.ReasonFlags | None) -> str | None:
    name = REASON_FLAGS.get(flag) if flag is not None else None
    return None if name == "unspecified" else name


def expected_status(facts: CertificateFacts, with_invalidity: bool) -> Status:
    """What every channel must state for this registry row."""
    if facts.status == "good" or facts.revocation_time is None:
        return GOOD
    reason = None if facts.reason in (None, "unspecified") else facts.reason
    return Revoked(int(facts.revocation_time), reason, facts.invalidity_date if with_invalidity else None)


def describe(status: Status) -> str:
    if not isinstance(status, Revoked):
        return "good"
    what = "on hold" if status.reason == "certificateHold" else f"revoked ({status.reason or 'no reason'})"
    text = f"{what} since {format_time(status.time)}"
    return text + (f", invalid since {format_time(status.invalidity)}" if status.invalidity is not None else "")


@dataclass(frozen=True)
class Finding:
    """A channel states something else than the registry (or states it in a way a client must reject).

    ``serial_hex`` is None for a finding about a channel as a whole (a served CRL older than the one the
    registry records as published, a CRL whose signature does not verify).
    """

    channel: str
    issuer: str
    serial_hex: str | None
    expected: str
    seen: str
    where: str  # the request or file: "GET sha256", "ac-personnes-delta.crl number 12", "ldap://host"

    @property
    def subject(self) -> tuple[str, str, str]:
        """What disagrees: a certificate on a channel, or a channel-level thing."""
        return self.channel, self.issuer, self.serial_hex or f"*{self.where}"

    def as_dict(self) -> dict[str, str | None]:
        return {"channel": self.channel, "issuer": self.issuer,
                "serial": f"0x{self.serial_hex}" if self.serial_hex else None,
                "expected": self.expected, "seen": self.seen, "where": self.where}

    def text(self) -> str:
        serial = f"0x{self.serial_hex}" if self.serial_hex else "(whole channel)"
        return f"{self.channel} {self.issuer} {serial}: expected {self.expected}, seen {self.seen} ({self.where})"


@dataclass(frozen=True)
class Trouble:
    """A channel that did not answer (unreachable, timeout, tryLater): no statement to compare."""

    channel: str
    issuer: str
    text: str
