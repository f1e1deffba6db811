"""Revocation rules of RFC 5280, as a pure decision over the current state (no I/O here).

- revocation is final, except ``certificateHold`` which can be released (or made permanent);
- the reason of a revoked certificate may only change to ``keyCompromise``;
- revoking an expired certificate is allowed; a revocation time in the future is not;
- an invalidity date (when the key was compromised or the certificate became invalid) is never after the
  revocation time in force, never more than ``INVALIDITY_BEFORE_NOT_BEFORE`` before the certificate's
  notBefore, and never on a hold (RFC 5280 §5.3.2 gives it no meaning there);
- every time must be encodable in a CRL (``inputs.MIN_TIME`` .. ``inputs.MAX_TIME``);
- repeating an operation is a no-op that says so;
- a state read from a file (``index.txt``) never silently undoes a later change (``file_state_order``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from directory.inputs import MAX_TIME, MIN_TIME, format_time
from directory.refusal import Refused

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
# An invalidity date may precede notBefore (a key generated, or reused, before its certificate), but not
# by more than this: anything earlier is a typo, not a fact about the key.
INVALIDITY_BEFORE_NOT_BEFORE = 366 * 86400


class RevocationRefused(Refused, ValueError):
    """The request breaks a rule; nothing is changed.

    ``conflict`` is true when the request is well formed but the certificate's current state forbids it
    (HTTP 409 in the admin API), false when the request itself is invalid (422).
    """


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
    if not MIN_TIME <= at <= MAX_TIME:
        raise RevocationRefused("revocation time is outside 1950..9999 (not encodable in a CRL)")
    if not_before is not None and at < not_before:
        raise RevocationRefused("revocation time is before the certificate's notBefore")
    hold = reason == "certificateHold"
    if invalidity_date is not None and hold:
        raise RevocationRefused("a certificateHold has no invalidity date")
    decision = _revoke(current, reason, at, invalidity_date, hold)
    _check_invalidity(decision.state, invalidity_date, not_before)
    return decision


def _revoke(current: RevocationState, reason: str, at: int, invalidity_date: int | None, hold: bool) -> Decision:
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


def _check_invalidity(state: RevocationState, given: int | None, not_before: int | None) -> None:
    """The supplied invalidity date against the revocation time that will be in force (a hold made
    permanent keeps the hold's time) and the certificate's notBefore."""
    if given is None:
        return
    if not MIN_TIME <= given <= MAX_TIME:
        raise RevocationRefused("invalidity date is outside 1950..9999 (not encodable in a CRL)")
    if state.revocation_time is not None and given > state.revocation_time:
        raise RevocationRefused(f"invalidity date is after the revocation time ({format_time(state.revocation_time)})")
    if not_before is not None and given < not_before - INVALIDITY_BEFORE_NOT_BEFORE:
        raise RevocationRefused("invalidity date is more than a year before the certificate's notBefore")


def decide_release(current: RevocationState) -> Decision:
    """Releasing a hold: only an on-hold certificate goes back to good."""
    if current.status == "on-hold":
        return Decision("apply", RevocationState("good"), "hold released")
    if current.status == "good":
        return Decision("noop", current, "not on hold (already good)")
    raise RevocationRefused(f"revoked ({current.reason}): revocation is final, only certificateHold can be released",
                            conflict=True)


FileOrder = Literal["same", "file-newer", "registry-newer"]


def file_state_order(current: RevocationState, last_change: int | None, given: RevocationState) -> FileOrder:
    """Which of two differing states is the newer: the registry's ``current`` one (whose last status change
    was committed at ``last_change``, None if it never changed) or the one a file ``given`` (an
    ``openssl ca`` index line: good, or revoked/held since its revocation time).

    A file's good state carries no time and knows no revocation: the registry's is newer. A file's
    revocation is newer when it is dated after the registry's state began (its revocation time; for a good
    certificate, the release of its hold), or when the registry never changed the certificate.
    """
    if current.status == given.status and current.reason == given.reason:
        return "same"
    if given.status == "good" or given.revocation_time is None:
        return "registry-newer"
    since = current.revocation_time if current.status != "good" else last_change
    if since is None or given.revocation_time > since:
        return "file-newer"
    return "registry-newer"


def describe_state(state: RevocationState) -> str:
    """``good``, ``revoked (keyCompromise) since 2026-11-28T10:00:00Z``: a state as reports name it."""
    if state.status == "good":
        return "good"
    since = f" since {format_time(state.revocation_time)}" if state.revocation_time is not None else ""
    return f"{state.status} ({state.reason}){since}"
