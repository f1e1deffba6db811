"""CRLs as a relying party sees them: downloaded over HTTP, parsed completely, signature verified.

A served CRL is parsed once per content (ETag, then the bytes' hash): every entry and every extension
goes through ``cryptography``, so an entry a client could not read is found even when no sampled
serial is on it. The result is a serial → status map that answers every sampled serial of the issuer.
Views: the full CRL (main, and the serial's partition) as a client without deltas sees it, and the full
CRL with the delta applied (RFC 5280 §5.2.4) as a delta-aware client sees it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509

from directory.check.http import HttpClient, HttpTrouble
from directory.check.model import GOOD, Revoked, Status, reason_of
from directory.config import IssuerConfig
from directory.publication import Target, crl_path, targets_of

CLOCK_SKEW = 300
REMOVED = "removeFromCRL"


@dataclass
class ParsedCrl:
    name: str
    sha256: str
    number: int
    base_number: int | None  # delta CRLs: the full CRL number they apply to
    this_update: float
    next_update: float | None
    entries: dict[int, Revoked] = field(repr=False)


@dataclass(frozen=True)
class View:
    """What one kind of client learns about a serial, and since when that CRL speaks."""

    where: str
    status: Status | None  # None: the serial's partition/delta does not apply
    this_update: float
    allowance: float  # seconds a change may take to appear in this view
    full: bool  # a complete CRL (compared on its own)


class CrlProbe:
    def __init__(self, http: HttpClient, issuers: Sequence[IssuerConfig], margin: float) -> None:
        self.http = http
        self.issuers = {i.name: i for i in issuers}
        self.margin = margin
        self.served: dict[str, ParsedCrl] = {}  # file name -> what is served now
        self._etags: dict[str, str] = {}
        self._parsed: dict[str, ParsedCrl] = {}  # sha256 of the bytes -> parsed (the served ones, and one before)
        self.parses = 0

    def targets(self, issuer: str) -> list[Target]:
        return targets_of(self.issuers[issuer])

    def refresh(self, issuer: str, now: float) -> tuple[list[tuple[str, str]], list[str]]:
        """Fetch the issuer's served CRLs (conditional GET). ([(file, problem)], [trouble])."""
        problems, troubles = [], []
        for target in self.targets(issuer):
            name = target.filename
            headers = {"If-None-Match": self._etags[name]} if name in self._etags and name in self.served else {}
            try:
                status, answer_headers, body = self.http.request("GET", crl_path(name), headers=headers)
            except HttpTrouble as exc:
                troubles.append(f"{name}: {exc}")
                continue
            if status == 304:
                problem = self._currency(self.served[name], now)
            elif status == 200:
                problem = self._take(issuer, name, target, body, answer_headers.get("etag", ""), now)
            elif status == 503:
                troubles.append(f"{name}: HTTP 503 (listener full)")
                continue
            else:
                self.served.pop(name, None)
                problem = f"HTTP {status}"
            if problem:
                problems.append((name, problem))
        return problems, troubles

    def _take(self, issuer: str, name: str, target: Target, body: bytes, etag: str, now: float) -> str | None:
        digest = hashlib.sha256(body).hexdigest()
        parsed = self._parsed.get(digest)
        if parsed is None:
            try:
                parsed = self._parse(self.issuers[issuer], name, target, body, digest)
            except ValueError as exc:
                self.served.pop(name, None)
                return f"does not parse or verify: {exc}"
            self.parses += 1
            keep = {p.sha256 for p in self.served.values()}
            self._parsed = {k: v for k, v in self._parsed.items() if k in keep}  # bounded: served ones + this
            self._parsed[digest] = parsed
        self.served[name] = parsed
        self._etags[name] = etag
        return self._currency(parsed, now)

    @staticmethod
    def _currency(crl: ParsedCrl, now: float) -> str | None:
        if crl.this_update > now + CLOCK_SKEW:
            return f"number {crl.number}: thisUpdate in the future"
        if crl.next_update is not None and crl.next_update <= now:
            return f"number {crl.number}: expired (nextUpdate passed)"
        return None

    @staticmethod
    def _parse(issuer: IssuerConfig, name: str, target: Target, body: bytes, digest: str) -> ParsedCrl:
        """Everything a strict client reads; ValueError names the first thing it would reject."""
        crl = x509.load_der_x509_crl(body)
        if crl.issuer != issuer.certificate.subject:
            raise ValueError("issued by another name")
        if not crl.is_signature_valid(issuer.certificate.public_key()):  # type: ignore[arg-type]
            raise ValueError("signature does not verify with the CA certificate")
        number = base = None
        for ext in crl.extensions:
            value = ext.value
            if isinstance(value, x509.CRLNumber):
                number = value.crl_number
            elif isinstance(value, x509.DeltaCRLIndicator):
                base = value.crl_number
            elif isinstance(value, x509.UnrecognizedExtension) and ext.critical:
                raise ValueError(f"unknown critical extension {ext.oid.dotted_string}")
        if number is None:
            raise ValueError("no cRLNumber")
        if (base is not None) != (target.kind == "delta"):
            raise ValueError("deltaCRLIndicator where it does not belong" if base is not None
                             else "delta CRL without deltaCRLIndicator")
        entries: dict[int, Revoked] = {}
        for revoked in crl:
            reason = invalidity = None
            for ext in revoked.extensions:
                value = ext.value
                if isinstance(value, x509.CRLReason):
                    reason = reason_of(value.reason)
                elif isinstance(value, x509.InvalidityDate):
                    invalidity = int(value.invalidity_date_utc.timestamp())
                elif ext.critical and not isinstance(value, x509.CertificateIssuer):
                    raise ValueError(f"entry 0x{revoked.serial_number:x}: unknown critical extension")
            if revoked.serial_number in entries:
                raise ValueError(f"serial 0x{revoked.serial_number:x} listed twice")
            entries[revoked.serial_number] = Revoked(int(revoked.revocation_date_utc.timestamp()), reason,
                                                     invalidity)
        next_update = crl.next_update_utc
        return ParsedCrl(name, digest, number, base, crl.last_update_utc.timestamp(),
                         next_update.timestamp() if next_update else None, entries)

    # -- what clients learn ---------------------------------------------------------------------------
    def views(self, issuer: str, serial: int) -> list[View]:
        config = self.issuers[issuer]
        settings = config.crl
        delay = settings.on_revocation_delay
        full_allowance = (settings.interval if delay is None else delay) + self.margin
        delta_allowance = (delay if delay is not None else settings.delta_interval) + self.margin
        out = []
        main = None
        for target in self.targets(issuer):
            crl = self.served.get(target.filename)
            if crl is None:
                continue
            where = f"{target.filename} number {crl.number}"
            if target.kind == "full":
                if not target.covers(serial):
                    continue
                if target.scope == "main":
                    main = crl
                out.append(View(where, _status(crl.entries.get(serial)), crl.this_update, full_allowance, True))
            elif main is not None and crl.base_number is not None and crl.base_number <= main.number < crl.number:
                listed = crl.entries.get(serial)
                status = _status(main.entries.get(serial)) if listed is None else _status(listed)
                out.append(View(f"{main.name} number {main.number} + {where}", status, crl.this_update,
                                delta_allowance, False))
        return out


def _status(entry: Revoked | None) -> Status:
    if entry is None or entry.reason == REMOVED:
        return GOOD
    return entry
