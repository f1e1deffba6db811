"""Checking and importing certificates: only what a configured issuer really signed gets in.

Each certificate must parse, carry a serial of at most 20 octets, be signed by the key of a
configured issuer (name and signature checked with ``cryptography``) and have a sane validity
(notBefore < notAfter, inside the issuer certificate's validity). Refusals are listed with their reason;
everything else is imported in batches, each batch one transaction, so an interrupted import can simply
be run again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from directory.certinfo import CertificateInfo, describe
from directory.ingest.sources import SourceItem, expand, read_file
from directory.inputs import format_time
from directory.refusal import Refused
from directory.registry import NotRegistered, Registry, RegistryError
from directory.registry.store import ImportOutcome
from directory.revocation import RevocationRefused, RevocationState, describe_state
from directory.serials import SerialError

BATCH = 500
VALIDITY_TOLERANCE = 300  # seconds of clock skew tolerated against the issuer's validity


class CertificateRefused(Refused, ValueError):
    """A certificate that will not be imported, with the reason."""


@dataclass(frozen=True)
class KnownIssuer:
    name: str
    certificate: x509.Certificate


@dataclass(frozen=True)
class Difference:
    """A certificate whose state in the file differs from the registry's, the registry's being newer."""

    source: str
    issuer: str
    serial_hex: str
    registry: RevocationState
    file: RevocationState
    applied: bool  # the file's older state was applied (``apply_older``); else the registry kept its own

    def as_dict(self) -> dict[str, object]:
        return {"source": self.source, "issuer": self.issuer, "serial_hex": self.serial_hex,
                "registry": _state_dict(self.registry), "file": _state_dict(self.file),
                "outcome": "file's older state applied" if self.applied else "registry kept (its change is newer)"}

    def text(self) -> str:
        verdict = ("the file's older state applied (--apply-older)" if self.applied else
                   "kept the registry's (--apply-older applies the file's)")
        return (f"{self.issuer} 0x{self.serial_hex}: the registry says {describe_state(self.registry)}, changed after "
                f"the file's {describe_state(self.file)}: {verdict}")


def _state_dict(state: RevocationState) -> dict[str, object]:
    return {"status": state.status, "reason": state.reason, "revocation_time": format_time(state.revocation_time),
            "invalidity_date": format_time(state.invalidity_date)}


@dataclass
class ImportSummary:
    imported: int = 0
    present: int = 0
    revoked: int = 0  # status changes applied from index lines (revocations, holds, and releases with apply_older)
    refused: list[tuple[str, str]] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused

    def as_dict(self) -> dict[str, object]:
        return {"imported": self.imported, "already_present": self.present, "revocations_applied": self.revoked,
                "refused": [{"source": s, "reason": r} for s, r in self.refused],
                "differences": [d.as_dict() for d in self.differences]}


class CertificateChecker:
    """Maps a certificate to the configured issuer that signed it, or refuses it."""

    def __init__(self, issuers: Iterable[KnownIssuer]) -> None:
        self._by_subject: dict[bytes, list[KnownIssuer]] = {}
        for issuer in issuers:
            self._by_subject.setdefault(issuer.certificate.subject.public_bytes(), []).append(issuer)

    def check(self, der: bytes) -> tuple[str, CertificateInfo]:
        try:
            cert = x509.load_der_x509_certificate(der)
            # parsed lazily: a damaged issuer name only shows when it is read (found by the fuzzer)
            issuer_name = cert.issuer.public_bytes()
        except (ValueError, x509.InvalidVersion) as exc:
            raise CertificateRefused(f"not a valid DER X.509 certificate ({_short(exc)})") from None
        # (trailing bytes after the certificate are refused by the parser itself: ParseError ExtraData)
        candidates = self._by_subject.get(issuer_name)
        if not candidates:
            raise CertificateRefused(f"issuer {cert.issuer.rfc4514_string()!r} is not a configured issuer")
        for issuer in candidates:
            if der == issuer.certificate.public_bytes(Encoding.DER):
                raise CertificateRefused(f"this is issuer {issuer.name}'s own certificate: it is configured, "
                                         "not imported")
        last_error = "signature does not verify"
        for issuer in candidates:
            try:
                cert.verify_directly_issued_by(issuer.certificate)
            except (ValueError, TypeError, InvalidSignature) as exc:
                last_error = f"signature does not verify under issuer {issuer.name} ({_short(exc) or 'bad signature'})"
                continue
            try:
                info = describe(cert, der)
            except (SerialError, ValueError, x509.InvalidVersion) as exc:
                raise CertificateRefused(f"unusable certificate: {exc}") from None
            self._check_validity(info, issuer)
            return issuer.name, info
        raise CertificateRefused(last_error)

    @staticmethod
    def _check_validity(info: CertificateInfo, issuer: KnownIssuer) -> None:
        if info.not_before >= info.not_after:
            raise CertificateRefused("validity is empty or reversed (notBefore >= notAfter)")
        ca_from = int(issuer.certificate.not_valid_before_utc.timestamp())
        ca_to = int(issuer.certificate.not_valid_after_utc.timestamp())
        if info.not_before < ca_from - VALIDITY_TOLERANCE or info.not_after > ca_to + VALIDITY_TOLERANCE:
            raise CertificateRefused(f"validity lies outside issuer {issuer.name}'s own validity")


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else ""


class Importer:
    """Feeds checked certificates (and index.txt revocations) into the registry."""

    def __init__(self, registry: Registry, issuers: Iterable[KnownIssuer], actor: str = "import",
                 after_import: Callable[[str, list[CertificateInfo]], None] | None = None,
                 apply_older: bool = False) -> None:
        self.registry = registry
        self.checker = CertificateChecker(issuers)
        self.actor = actor
        self.after_import = after_import  # called with the certificates an import added (e.g. LDAP projection)
        # an index line's state is applied even where the registry changed the certificate since
        self.apply_older = apply_older

    def import_paths(self, paths: list[Path], certs_dir: Path | None = None,
                     progress: Callable[[int, int], None] | None = None) -> ImportSummary:
        files = expand(paths)
        summary = ImportSummary()
        for missing in (p for p in paths if not p.exists()):
            summary.refused.append((str(missing), "no such file or directory"))
        existing = [f for f in files if f.exists()]

        def items() -> Iterator[tuple[int, SourceItem]]:
            for n, path in enumerate(existing, start=1):
                for item in read_file(path, certs_dir):
                    yield n, item

        self.import_items(items(), summary, lambda n: progress(n, len(existing)) if progress else None)
        return summary

    def import_items(self, items: Iterator[tuple[int, SourceItem]], summary: ImportSummary,
                     progress: Callable[[int], None] | None = None) -> None:
        batch: list[tuple[str, str, CertificateInfo, SourceItem]] = []
        done = 0
        for done, item in items:
            if item.der is None:
                summary.refused.append((item.origin, item.error or "unreadable"))
                continue
            try:
                issuer, info = self.checker.check(item.der)
            except CertificateRefused as exc:
                summary.refused.append((item.origin, str(exc)))
                continue
            batch.append((item.origin, issuer, info, item))
            if len(batch) >= BATCH:
                self._flush(batch, summary)
                if progress:
                    progress(done)
        self._flush(batch, summary)
        if progress:
            progress(done)

    def import_der(self, der: bytes) -> tuple[str, str, str]:
        """Import one certificate; returns (issuer, serial_hex, result) or raises ``CertificateRefused``."""
        issuer, info, outcome = self.import_one(der)
        if outcome.result == "conflict":
            raise CertificateRefused(outcome.message)
        return issuer, info.serial_hex, outcome.result

    def import_one(self, der: bytes) -> tuple[str, CertificateInfo, ImportOutcome]:
        """Check and import one certificate; ``CertificateRefused`` when the check fails, a conflict is an outcome."""
        issuer, info = self.checker.check(der)
        outcome = self.registry.import_certificates(issuer, [info], self.actor)[0]
        if self.after_import is not None and outcome.result in ("created", "completed"):
            self.after_import(issuer, [info])
        return issuer, info, outcome

    def _flush(self, batch: list[tuple[str, str, CertificateInfo, SourceItem]], summary: ImportSummary) -> None:
        by_issuer: dict[str, list[tuple[str, CertificateInfo, SourceItem]]] = {}
        for origin, issuer, info, item in batch:
            by_issuer.setdefault(issuer, []).append((origin, info, item))
        for issuer, entries in by_issuer.items():
            outcomes = self.registry.import_certificates(issuer, [e[1] for e in entries], self.actor)
            if self.after_import is not None:
                self.after_import(issuer, [e[1] for e, o in zip(entries, outcomes, strict=True)
                                           if o.result in ("created", "completed")])
            for (origin, info, item), outcome in zip(entries, outcomes, strict=True):
                if outcome.result == "conflict":
                    summary.refused.append((origin, outcome.message))
                    continue
                if outcome.result == "present":
                    summary.present += 1
                else:
                    summary.imported += 1
                if item.indexed:
                    self._apply_index_state(origin, issuer, info, item, summary)
        batch.clear()

    def _apply_index_state(self, origin: str, issuer: str, info: CertificateInfo, item: SourceItem,
                           summary: ImportSummary) -> None:
        """The status an index line gives, unless the registry changed the certificate since (then reported)."""
        rev = item.revocation
        given = RevocationState("good") if rev is None else RevocationState(
            "on-hold" if rev.reason == "certificateHold" else "revoked", rev.reason, rev.at, rev.invalidity_date)
        current = self.registry.status_of(issuer, info.serial_hex)
        if current is not None and current[0] == given.status and current[2] == given.reason:
            return  # the common case, read without a write transaction
        try:
            outcome = self.registry.apply_file_state(issuer, info.serial_hex, given, self.actor, self.apply_older)
        except (RevocationRefused, RegistryError, NotRegistered) as exc:
            summary.refused.append((origin, f"{'revocation' if rev else 'state'} not applied: {exc}"))
            return
        if outcome.order == "registry-newer":
            summary.differences.append(Difference(origin, issuer, info.serial_hex, outcome.before, given,
                                                  outcome.applied))
        if outcome.applied and outcome.order != "same":
            summary.revoked += 1

