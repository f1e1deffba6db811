"""``annuaire crl publish``: serving a CRL signed elsewhere (an offline root's ARL, a moved CA's last CRL).

The CRL is read as a relying party would and refused, with the reason and nothing changed, unless:
it is one DER (or PEM) CRL, not a delta; it is issued by the issuer's certificate subject and its
signature verifies with that certificate's key; it carries a cRLNumber greater than every number of the
issuer's sequence (published, built or burnt here, or archived on this machine); its nextUpdate is in the
future and its thisUpdate not; it has no unknown critical extension (CRL or entry) and no partial scope
(indirect, some reasons only); with ``issuing_distribution_point = true`` its IDP names our URL.

It is then installed exactly like a CRL built here (``install.CrlFolder``): fsynced temporary file, then
under the issuer's lock the archive link, the atomic rename and the registry record (one transaction:
number, audit record, the directory's CA entry queued, the bytes for the other nodes). The HTTP side
serves it at once (it notices the new file). For an issuer whose key is here, the numbers it builds next
follow the published one: publishing the previous system's last CRL carries its numbering over.

The registry's certificate statuses are not changed by a published CRL: an offline CA's revocations reach
the registry by ``annuaire import`` of its ``index.txt`` (the publication checker reports a certificate
the two disagree on).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from directory.config import IssuerConfig
from directory.crl.builder import PublishedCrl
from directory.crl.install import CrlFolder, write_synced
from directory.publication import Target, crl_url, full_crl_name
from directory.refusal import Refused
from directory.registry import Registry
from directory.registry.crls import CrlNumberRefused

log = logging.getLogger(__name__)
MAX_CRL_BYTES = 256 << 20  # 7 million entries: far beyond any CA we publish for
CLOCK_SKEW = 300  # seconds a thisUpdate may lie ahead of our clock
_PEM = re.compile(rb"^-----BEGIN X509 CRL-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END X509 CRL-----\r?\n?$")


class CrlRefused(Refused):
    """A CRL that will not be published, with the reason (``conflict``: its number is not greater)."""


class OfflineIssuer(Refused):
    """An operation that needs the issuer's key, on an issuer whose key is not here."""


def refuse_if_offline(issuer: IssuerConfig, what: str) -> None:
    """Revocations of an offline issuer are made at its key ceremony: the registry cannot put them on a CRL."""
    if issuer.offline:
        raise OfflineIssuer(f"issuer {issuer.name} is offline (no key_label): {what} is done at its key ceremony; "
                            "publish the CRL signed there with `annuaire crl publish` and import its index.txt",
                            conflict=True)


@dataclass(frozen=True)
class CheckedCrl:
    der: bytes
    number: int
    this_update: int
    next_update: int
    entries: int


def read_crl(data: bytes) -> bytes:
    """The DER of one CRL given as DER or as a single PEM block (anything else refused)."""
    if len(data) > MAX_CRL_BYTES:
        raise CrlRefused(f"larger than {MAX_CRL_BYTES} bytes")
    if data[:1] == b"\x30":
        return data
    match = _PEM.match(data.strip(b" \t\r\n") + b"\n")
    if match is None:
        raise CrlRefused("neither a DER CRL nor one PEM 'X509 CRL' block")
    try:
        return base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        raise CrlRefused("PEM block with invalid base64") from None


def check_crl(issuer: IssuerConfig, der: bytes, base_url: str, now: float) -> CheckedCrl:
    """Everything a strict relying party checks, and what serving it as the issuer's CRL needs."""
    try:
        crl = x509.load_der_x509_crl(der)
        issuer_name = crl.issuer.public_bytes()
    except ValueError as exc:
        raise CrlRefused(f"not a DER X.509 CRL ({str(exc).splitlines()[0][:160]})") from None
    ca = issuer.certificate
    if issuer_name != ca.subject.public_bytes():
        raise CrlRefused(f"issued by {crl.issuer.rfc4514_string()!r}, not by {issuer.name} "
                         f"({ca.subject.rfc4514_string()!r})")
    try:
        valid = crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise CrlRefused(f"signature cannot be checked with {issuer.name}'s certificate ({exc})") from None
    if not valid:
        raise CrlRefused(f"signature does not verify with {issuer.name}'s certificate")
    number = _extensions(issuer, crl, base_url)
    this_update = int(crl.last_update_utc.timestamp())
    next_update = crl.next_update_utc
    if next_update is None:
        raise CrlRefused("no nextUpdate: relying parties could not tell when to fetch the next one")
    if int(next_update.timestamp()) <= now:
        raise CrlRefused(f"expired: its nextUpdate ({next_update:%Y-%m-%dT%H:%M:%SZ}) has passed")
    if this_update > now + CLOCK_SKEW:
        raise CrlRefused("its thisUpdate is in the future")
    entries = _entries(crl)
    return CheckedCrl(der, number, this_update, int(next_update.timestamp()), entries)


def _extensions(issuer: IssuerConfig, crl: x509.CertificateRevocationList, base_url: str) -> int:
    """The cRLNumber, once the CRL-level extensions say it is a complete CRL we may serve as the issuer's."""
    number = None
    idp: x509.IssuingDistributionPoint | None = None
    try:
        extensions = list(crl.extensions)
    except ValueError as exc:
        raise CrlRefused(f"an extension does not parse ({exc})") from None
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.CRLNumber):
            number = value.crl_number
        elif isinstance(value, x509.DeltaCRLIndicator):
            raise CrlRefused("a delta CRL (deltaCRLIndicator): only complete CRLs are published")
        elif isinstance(value, x509.IssuingDistributionPoint):
            idp = value
        elif isinstance(value, x509.UnrecognizedExtension) and ext.critical:
            raise CrlRefused(f"unknown critical extension {ext.oid.dotted_string}")
    if number is None:
        raise CrlRefused("no cRLNumber (RFC 5280 requires one)")
    if idp is not None and (idp.indirect_crl or idp.only_some_reasons):
        raise CrlRefused("a partial CRL (indirect, or some reasons only) cannot stand for the issuer's CRL")
    if issuer.crl.issuing_distribution_point:
        url = crl_url(base_url, full_crl_name(issuer.name))
        names = [n.value for n in (idp.full_name or [])] if idp is not None else []
        if url not in names:
            raise CrlRefused(f"its issuingDistributionPoint must name {url} (issuing_distribution_point = true)")
    return number


def _entries(crl: x509.CertificateRevocationList) -> int:
    """Every entry read, as a client does; an unknown critical entry extension is refused."""
    count = 0
    try:
        for revoked in crl:
            revoked.revocation_date_utc  # noqa: B018 (parsed here, or refused)
            for ext in revoked.extensions:
                if ext.critical and isinstance(ext.value, x509.UnrecognizedExtension):
                    raise CrlRefused(f"entry 0x{revoked.serial_number:x}: unknown critical extension "
                                     f"{ext.oid.dotted_string}")
            count += 1
    except ValueError as exc:
        raise CrlRefused(f"entry {count + 1} does not parse ({exc})") from None
    return count


def publish_crl(issuer: IssuerConfig, registry: Registry, crl_dir: Path, base_url: str, data: bytes, actor: str,
                clock: Callable[[], float] = time.time) -> PublishedCrl:
    """Check ``data`` and install it as ``issuer``'s CRL; ``CrlRefused`` (nothing changed) otherwise."""
    started = time.monotonic()
    checked = check_crl(issuer, read_crl(data), base_url, clock())
    target = Target("full", "main", full_crl_name(issuer.name))
    folder = CrlFolder(crl_dir, issuer.name, issuer.crl.archive)
    tmp = folder.temporary(target.filename, checked.number, ".publish")
    sha256 = hashlib.sha256(checked.der).hexdigest()
    write_synced(tmp, checked.der)
    try:
        with folder.lock():
            _check_number(issuer.name, registry, folder, target, checked.number)
            previous = _read_or_none(crl_dir / target.filename)
            final = folder.install(tmp, target.filename, checked.number)
            try:
                record = registry.crl_record_published(
                    issuer.name, "main", "full", checked.number, checked.this_update, checked.next_update,
                    checked.entries, len(checked.der), sha256, actor, checked.der)
            except BaseException:  # another node got a greater number in between: put ours back
                _restore(final, previous)
                (crl_dir / "archive" / f"{final.stem}-{checked.number}{final.suffix}").unlink(missing_ok=True)
                raise
    except CrlNumberRefused as exc:
        raise CrlRefused(str(exc), conflict=True) from None
    finally:
        tmp.unlink(missing_ok=True)
    folder.prune(target.filename)
    log.info("published %s number %d (signed elsewhere): %d entries, %d bytes, next update in %.0f days",
             target.filename, checked.number, checked.entries, len(checked.der),
             (checked.next_update - clock()) / 86400, extra={"issuer": issuer.name, "actor": actor})
    return PublishedCrl(target, record, final, checked.entries, len(checked.der), sha256, checked.this_update,
                        checked.next_update, time.monotonic() - started)


def _check_number(name: str, registry: Registry, folder: CrlFolder, target: Target, number: int) -> None:
    latest = registry.crl_latest(name, "main", "full")
    highest = max(folder.highest_archived([target.filename]), latest.number if latest else 0,
                  registry.crl_last_number(name, "main"))
    if number <= highest:
        raise CrlRefused(f"{name}: CRL number {number} is not greater than {highest}, the last number of its "
                         "sequence (CRL numbers only go up)", conflict=True)


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _restore(final: Path, previous: bytes | None) -> None:
    if previous is None:
        final.unlink(missing_ok=True)
        return
    tmp = final.with_name(f".{final.name}.restore.tmp")
    write_synced(tmp, previous)
    tmp.replace(final)
