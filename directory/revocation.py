"""Revocation rules of RFC 5280, as a pure decision over the current state (no I/O here).

- revocation is final, except ``certificateHold`` which can be released (or made permanent);
- the reason of a revoked certificate may only change to ``keyCompromise``;
- revoking an expired certificate is allowed; a revocation time in the future is not;
- repeating an operation is a no-op that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# CRLReason codes (RFC 5280 §5.3.1); 7 is unused, removeFromCRL (8) only appears in delta CRLs.
REASON_CODES: dict[str, int] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}
REASON_NAMES = {code: name for name, code in REASON_CODES.items()}
_LOWER = {name.lower(): name for name in REASON_CODES}
_ALIASES = {"cacompromise": "cACompromise", "aacompromise": "aACompromise", "hold": "certificateHold"}

Status = Literal["good", "revoked", "on-hold"]
CLOCK_SKEW = 300  # seconds a supplied revocation time may lie ahead of our clock


class RevocationRefused(ValueError):
    """The request breaks a rule; nothing is changed.

    ``conflict`` is true when the request is well formed but the certificate's current state forbids it
    (HTTP 409 in the admin API), false when the request itself is invalid (422).
    """

    def __init__(self, message: str, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict


def parse_reason(text: str) -> str:
    """Canonical reason name from any casing (``keycompromise``, ``KeyCompromise``) or a code."""
    key = text.strip()
    if key.isdigit() and int(key) in REASON_NAMES:
        return REASON_NAMES[int(key)]
    name = _LOWER.get(key.lower()) or _ALIASES.get(key.lower())
    if name is None:
        raise RevocationRefused(f"unknown reason {text!r} (one of: {', '.join(REASON_CODES)})")
    return name


@dataclass(frozen=True)
class RevocationState:
    status: Status
    reason: str | None = None
    revocation_time: int | None = None
    invalidity_date: int | None = None


@dataclass(frozen=True)
class Decision:
    action: Literal["apply", "noop"]
    state: RevocationState
    message: str


def decide_revoke(current: RevocationState, reason: str, at: int, invalidity_date: int | None,
                  now: int, not_before: int | None) -> Decision:
    """What revoking a certificate in ``current`` state with ``reason`` at ``at`` does."""
    if at > now + CLOCK_SKEW:
        raise RevocationRefused("revocation time is in the future")
    if not_before is not None and at < not_before:
        raise RevocationRefused("revocation time is before the certificate's notBefore")
    if invalidity_date is not None and invalidity_date > at:
        raise RevocationRefused("invalidity date is after the revocation time")
    hold = reason == "certificateHold"
    if current.status == "good":
        status: Status = "on-hold" if hold else "revoked"
        return Decision("apply", RevocationState(status, reason, at, invalidity_date),
                        "placed on hold" if hold else f"revoked ({reason})")
    if current.status == "on-hold":
        if hold:
            return Decision("noop", current, "already on hold")
        # Made permanent: the certificate has been unusable since the hold began.
        return Decision("apply", RevocationState("revoked", reason, current.revocation_time, invalidity_date),
                        f"hold made permanent ({reason})")
    # revoked
    if reason == current.reason:
        return Decision("noop", current, f"already revoked ({reason})")
    if reason == "keyCompromise":
        return Decision("apply", RevocationState("revoked", reason, current.revocation_time,
                                                 invalidity_date or current.invalidity_date),
                        f"reason changed from {current.reason} to keyCompromise")
    raise RevocationRefused(
        f"already revoked ({current.reason}); the reason of a revoked certificate may only change to keyCompromise",
        conflict=True,
    )


def decide_release(current: RevocationState) -> Decision:
    """Releasing a hold: only an on-hold certificate goes back to good."""
    if current.status == "on-hold":
        return Decision("apply", RevocationState("good"), "hold released")
    if current.status == "good":
        return Decision("noop", current, "not on hold (already good)")
    raise RevocationRefused(f"revoked ({current.reason}): revocation is final, only certificateHold can be released",
                            conflict=True)
