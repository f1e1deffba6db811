"""What the configured certificates must be for the service (and relying parties) to use them.

Checked by ``annuaire check-config``, before the HSM is asked anything: an issuer certificate is a CA
certificate allowed to sign certificates and CRLs (basicConstraints cA, keyUsage keyCertSign and
cRLSign); a delegated OCSP responder certificate carries id-kp-OCSPSigning, id-pkix-ocsp-nocheck (without
it a relying party must check the responder's own revocation, which RFC 6960 clients rarely can) and, if
it has a keyUsage, digitalSignature; none is expired or not yet valid; one that expires within
``EXPIRY_WARNING`` is a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

if TYPE_CHECKING:
    from directory.config.load import Config

EXPIRY_WARNING = 30 * 86400


@dataclass(frozen=True)
class Finding:
    """A problem (the service or relying parties would hit it) or a warning, about one configured thing."""

    level: str  # "problem" | "warning"
    where: str  # the configuration key: "issuers[ac-personnes].certificate", "hsm", "key 'ocsp-x'"
    text: str

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "where": self.where, "text": self.text}


def _date(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def validity(where: str, cert: x509.Certificate, now: float) -> list[Finding]:
    """Expired or not yet valid: a problem; expiring within ``EXPIRY_WARNING``: a warning."""
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not_after.timestamp() <= now:
        return [Finding("problem", where, f"expired on {_date(not_after)}")]
    if not_before.timestamp() > now:
        return [Finding("problem", where, f"not valid before {_date(not_before)}")]
    left = not_after.timestamp() - now
    if left < EXPIRY_WARNING:
        return [Finding("warning", where, f"expires in {int(left // 86400)} days, on {_date(not_after)}")]
    return []


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def issuer_findings(where: str, cert: x509.Certificate) -> list[Finding]:
    """A CA certificate that may sign certificates and CRLs."""
    out = []
    constraints = _extension(cert, x509.BasicConstraints)
    if not isinstance(constraints, x509.BasicConstraints) or not constraints.ca:
        out.append(Finding("problem", where, "not a CA certificate (basicConstraints cA is not true)"))
    usage = _extension(cert, x509.KeyUsage)
    if not isinstance(usage, x509.KeyUsage):
        out.append(Finding("problem", where, "no keyUsage: a CA certificate must assert keyCertSign and cRLSign"))
    else:
        if not usage.key_cert_sign:
            out.append(Finding("problem", where, "keyUsage lacks keyCertSign"))
        if not usage.crl_sign:
            out.append(Finding("problem", where, "keyUsage lacks cRLSign: relying parties refuse the CRLs it signs"))
    return out


def ocsp_signer_findings(where: str, cert: x509.Certificate) -> list[Finding]:
    """A delegated OCSP responder certificate (RFC 6960 §4.2.2.2)."""
    out = []
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if not isinstance(eku, x509.ExtendedKeyUsage) or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        out.append(Finding("problem", where, "extendedKeyUsage lacks id-kp-OCSPSigning: clients refuse its answers"))
    if _extension(cert, x509.OCSPNoCheck) is None:
        out.append(Finding("problem", where, "no id-pkix-ocsp-nocheck extension: relying parties would have to "
                                             "check the responder certificate's own revocation"))
    usage = _extension(cert, x509.KeyUsage)
    if isinstance(usage, x509.KeyUsage) and not usage.digital_signature:
        out.append(Finding("problem", where, "keyUsage lacks digitalSignature"))
    return out


def certificate_findings(config: Config, now: float) -> list[Finding]:
    """Every configured certificate the service uses: issuers, OCSP responders, the admin listener's."""
    out: list[Finding] = []
    for issuer in config.issuers:
        where = f"issuers[{issuer.name}].certificate"
        out += issuer_findings(where, issuer.certificate) + validity(where, issuer.certificate, now)
        ocsp = issuer.ocsp
        if ocsp is not None and ocsp.signer_certificate is not None:
            where = f"issuers[{issuer.name}].ocsp.signer_certificate"
            out += ocsp_signer_findings(where, ocsp.signer_certificate)
            out += validity(where, ocsp.signer_certificate, now)
    admin = config.admin
    if admin is not None and admin.tls_certificate is not None:
        out += _file_validity("admin.tls_certificate", admin.tls_certificate, now)
    return out


def _file_validity(where: str, path: Path, now: float) -> list[Finding]:
    """The first certificate of a PEM (chain) or DER file."""
    try:
        data = path.read_bytes()
        cert = (x509.load_pem_x509_certificates(data)[0] if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
    except (OSError, ValueError) as exc:
        return [Finding("problem", where, f"cannot read a certificate from {path}: {exc}")]
    return validity(where, cert, now)
