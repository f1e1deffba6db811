"""What the publication page, ``annuaire status`` and the health summary show: one read of the registry.

Everything comes from committed registry rows (a CRL is listed once its record is ``published``, which
happens after its file was atomically replaced), so the overview stays true while CRLs are being rebuilt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from directory.certinfo import subject_text
from directory.config import Config, IssuerConfig
from directory.crl.metrics import offline_crl_problem
from directory.publication import ca_certificate_url, crl_url, ocsp_signer_path, ocsp_url, policy_path, targets_of
from directory.registry import Registry
from directory.registry.checks import recent_reports

# Directory sync lag that makes the health summary say "degraded" (seconds since the oldest pending change).
LDAP_LAG_WARNING = 300
# A publication checker report older than this (seconds) is stale: its node stopped checking.
REPORT_STALE = 120


@dataclass(frozen=True)
class Problem:
    part: str
    text: str


def overview(config: Config, registry: Registry, now: float) -> dict[str, Any]:
    """The page's data: issuers with their certificate, CRLs and OCSP URL; the directory; problems found."""
    problems: list[Problem] = []
    counts = registry.counts()
    issuers = [_issuer(config, i, registry, now, counts.get(i.name, {}), problems) for i in config.issuers]
    directory = _directory(config, registry, now, problems)
    for report in recent_reports(registry, max(REPORT_STALE, 3 * config.check.interval), now):
        if report.get("text"):  # the publication checker of a node found disagreements
            problems.append(Problem("publication", str(report["text"])))
    return {
        "generated_at": int(now),
        "base_url": config.http.base_url,
        "issuers": issuers,
        "directory": directory,
        "health": {"ok": not problems, "problems": [{"part": p.part, "text": p.text} for p in problems]},
    }


def _issuer(config: Config, issuer: IssuerConfig, registry: Registry, now: float, counts: dict[str, int],
            problems: list[Problem]) -> dict[str, Any]:
    base = config.http.base_url
    der = issuer.certificate.public_bytes(Encoding.DER)
    crls = []
    for target in targets_of(issuer):
        record = registry.crl_latest(issuer.name, target.scope, target.kind)
        url = crl_url(base, target.filename)
        if record is None:
            crls.append({"kind": target.kind, "scope": target.scope, "url": url, "published": False})
            if target.kind == "full":
                problems.append(Problem("crl", f"{target.filename}: not published yet"))
            continue
        expired = record.next_update <= now
        offline = offline_crl_problem(issuer, registry, now) if target.kind == "full" else None
        # stale: a newer CRL is due and none is published (for an offline root: within its expiry_warning)
        stale = not expired and (offline is not None if issuer.offline
                                 else record.next_update - now < issuer.crl.overlap / 2)
        if offline is not None:  # signed at the key ceremony: said ahead of time, by expiry_warning
            problems.append(Problem("crl", offline[1]))
        elif expired:
            problems.append(Problem("crl", f"{target.filename}: expired (nextUpdate passed)"))
        elif stale:
            problems.append(Problem("crl", f"{target.filename}: nextUpdate is near and no newer CRL is published"))
        crls.append({"kind": target.kind, "scope": target.scope, "url": url, "published": True,
                     "number": record.number, "base_number": record.base_number,
                     "this_update": record.this_update, "next_update": record.next_update,
                     "entries": record.entries, "size": record.size, "sha256": record.sha256,
                     "age_seconds": max(0, int(now - record.this_update)), "expired": expired, "stale": stale})
    cert = issuer.certificate
    return {
        "name": issuer.name,
        "common_name": _common_name(cert) or issuer.name,
        "subject": subject_text(cert.subject),
        "not_before": int(cert.not_valid_before_utc.timestamp()),
        "not_after": int(cert.not_valid_after_utc.timestamp()),
        "sha256": hashlib.sha256(der).hexdigest(),
        "sha1": hashlib.sha1(der).hexdigest(),  # what many operators still compare by telephone
        "certificate_url": ca_certificate_url(base, issuer.name),
        "ocsp_url": ocsp_url(base) if issuer.ocsp is not None else None,
        "ocsp_signer": _ocsp_signer(base, issuer),
        "policies": [{"title": d.title, "url": d.url or base.rstrip("/") + policy_path(d.name or ""), "oid": d.oid,
                      "served": d.file is not None} for d in issuer.policies],
        "offline": issuer.offline,  # its CRL is signed at its key ceremony and published, not built here
        "counts": {"good": counts.get("good", 0), "revoked": counts.get("revoked", 0),
                   "on-hold": counts.get("on-hold", 0)},
        "crls": crls,
    }


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _ocsp_signer(base: str, issuer: IssuerConfig) -> dict[str, Any] | None:
    """The delegated OCSP responder's certificate (None: no OCSP, or the CA key signs the answers)."""
    cert = issuer.ocsp.signer_certificate if issuer.ocsp is not None else None
    if cert is None:
        return None
    der = cert.public_bytes(Encoding.DER)
    return {"certificate_url": base.rstrip("/") + ocsp_signer_path(issuer.name), "subject": subject_text(cert.subject),
            "not_before": int(cert.not_valid_before_utc.timestamp()),
            "not_after": int(cert.not_valid_after_utc.timestamp()), "sha256": hashlib.sha256(der).hexdigest()}


def _directory(config: Config, registry: Registry, now: float, problems: list[Problem]) -> dict[str, Any] | None:
    if config.ldap is None:
        return None
    depth, _, oldest = registry.ldap_outbox_stats()

    def number(name: str) -> int | None:
        value = registry.state_get(name)
        return int(value) if value not in (None, "") else None

    lag = max(0, int(now - oldest)) if oldest is not None else 0
    refused, refusals = registry.ldap_refused(5)
    last_error = registry.state_get("last_error") or None
    failures = number("failures") or 0
    state = {
        "urls": list(config.ldap.urls),
        "suffix": config.ldap.suffix,
        "last_full": number("last_full"),
        "last_full_repaired": number("last_full_drift"),
        "last_incremental": number("last_incremental"),
        "last_verify": number("last_verify"),
        "last_verify_drift": number("last_verify_drift"),
        "last_verify_repaired": number("last_verify_repaired"),  # a full pass repaired what it found since
        "outbox_depth": depth,
        "lag_seconds": lag,
        "last_error": last_error,
        "failures": failures,
        "refused": refused,
        "refusals": refusals,
    }
    if state["last_full"] is None:
        problems.append(Problem("ldap", "the directory has not been synchronised yet"))
    if failures:
        problems.append(Problem("ldap", f"sync failing ({failures} attempts): {last_error}"))
    if refused:
        first = refusals[0] if refusals else {}
        problems.append(Problem("ldap", f"{refused} directory write{'s' if refused != 1 else ''} refused, kept "
                                        f"and retried: {first.get('reason', '')}"))
    if lag > LDAP_LAG_WARNING:
        problems.append(Problem("ldap", f"{depth} changes waiting, the oldest for {lag} s"))
    if state["last_verify_drift"] and state["last_verify_repaired"] is None:
        problems.append(Problem("ldap", f"the last verify found {state['last_verify_drift']} differences, "
                                        "not repaired yet (a full synchronisation repairs them)"))
    return state


def age_in_words(seconds: float) -> str:
    """``42 seconds``, ``5 minutes``, ``3 hours``, ``2 days``: how old, the way people say it."""
    s = int(max(0, seconds))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= size:
            n = s // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{s} second{'s' if s != 1 else ''}"


def size_in_words(size: int | None) -> str:
    if size is None:
        return "?"
    for unit, scale in (("MB", 1_000_000), ("kB", 1_000)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
