"""The verdicts: what a channel stated about a certificate against the registry row, with its allowance.

A channel may lag behind a change for its allowance (OCSP: ``ocsp_grace``; a CRL: its rebuild delay +
``crl_margin``; the directory: ``ldap_grace``); a disagreement is reported once the change is older
than that. A CRL built clearly after the change (thisUpdate more than ``crl_margin`` later) has no
excuse at all. A wrong answer in itself (unsigned, unparseable, about another serial, expired) is
reported at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from directory.check.crl_probe import View
from directory.check.model import GOOD, Finding, Status, Trouble, describe, expected_status
from directory.check.ocsp_probe import Answer
from directory.config import CheckConfig
from directory.registry.checks import CertificateFacts


def ocsp_verdicts(facts: CertificateFacts, answers: Sequence[Answer], settings: CheckConfig,
                  now: float) -> tuple[list[Finding], list[Trouble]]:
    expected = expected_status(facts, with_invalidity=False)
    findings, troubles = [], []
    for answer in answers:
        where = str(answer.variant)
        if answer.trouble is not None:
            troubles.append(Trouble("ocsp", facts.issuer, f"0x{facts.serial_hex} {where}: {answer.trouble}"))
        elif answer.problem is not None:
            findings.append(Finding("ocsp", facts.issuer, facts.serial_hex, describe(expected), answer.problem,
                                    where))
        elif answer.status != expected and now - facts.changed_at > settings.ocsp_grace:
            seen = answer.status if isinstance(answer.status, str) else describe(answer.status)  # type: ignore[arg-type]
            findings.append(Finding("ocsp", facts.issuer, facts.serial_hex, describe(expected), seen, where))
    return findings, troubles


def crl_verdicts(facts: CertificateFacts, views: Sequence[View], settings: CheckConfig, keep_expired: bool,
                 now: float) -> list[Finding]:
    if facts.not_after is not None and facts.not_after <= now and not keep_expired:
        return []  # an expired certificate's entry may leave the CRL: either way is right
    expected = expected_status(facts, with_invalidity=True)
    out = []
    for view in views:
        if view.status == expected:
            continue
        late = now - facts.changed_at > view.allowance
        built_after = facts.changed_at < view.this_update - settings.crl_margin
        if late or built_after:
            out.append(Finding("crl", facts.issuer, facts.serial_hex, _listing(expected), _listing(view.status),
                               view.where))
    return out


def _listing(status: Status | None) -> str:
    return "not listed" if status in (GOOD, None) else f"listed {describe(status)}"  # type: ignore[arg-type]


def directory_expectation(facts: CertificateFacts, now: float) -> tuple[bool | None, float]:
    """(whether a certificateExactMatch search must find it, since when); None: no expectation."""
    expired = facts.not_after is not None and facts.not_after <= now
    if facts.status == "good" and facts.has_der and not expired:
        return facts.placed, facts.changed_at  # not placed by any DN template (or not yet): no entry expected
    since = max(facts.changed_at, facts.not_after) if expired and facts.not_after is not None else facts.changed_at
    return False, since


def ldap_verdict(facts: CertificateFacts, present: bool, settings: CheckConfig, where: str,
                 now: float) -> Finding | None:
    expected, since = directory_expectation(facts, now)
    if expected is None or expected == present or now - since <= settings.ldap_grace:
        return None
    words = {True: "found (certificateExactMatch)", False: "not found"}
    return Finding("ldap", facts.issuer, facts.serial_hex, words[expected], words[present], where)
