"""`annuaire crl show`: what a CRL file says, checked against the configured issuers when given."""

from __future__ import annotations

from typing import Any

from cryptography import x509

from directory.certinfo import subject_text
from directory.config import IssuerConfig
from directory.inputs import format_time


def describe_crl(data: bytes, issuers: list[IssuerConfig]) -> dict[str, Any]:
    """Parse ``data`` (DER or PEM); raise ``ValueError`` with a clear reason when it is not a CRL."""
    try:
        crl = x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----BEGIN") else x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise ValueError(f"not an X.509 CRL: {exc}") from None
    next_update = crl.next_update_utc
    info: dict[str, Any] = {
        "issuer": subject_text(crl.issuer),
        "this_update": format_time(crl.last_update_utc.timestamp()),
        "next_update": format_time(next_update.timestamp()) if next_update is not None else None,
        "entries": len(crl),
        "signature_algorithm": crl.signature_algorithm_oid._name,
    }
    for ext in crl.extensions:
        value = ext.value
        if isinstance(value, x509.CRLNumber):
            info["crl_number"] = value.crl_number
        elif isinstance(value, x509.DeltaCRLIndicator):
            info["delta_of"] = value.crl_number
        elif isinstance(value, x509.IssuingDistributionPoint):
            info["issuing_distribution_point"] = [n.value for n in value.full_name or []]
        elif isinstance(value, x509.FreshestCRL):
            info["freshest_crl"] = [n.value for dp in value for n in dp.full_name or []]
        elif isinstance(value, x509.AuthorityKeyIdentifier) and value.key_identifier:
            info["authority_key_id"] = value.key_identifier.hex()
    matches = [i for i in issuers if i.certificate.subject == crl.issuer]
    if matches:
        valid = any(crl.is_signature_valid(i.certificate.public_key()) for i in matches)  # type: ignore[arg-type]
        info["configured_issuer"] = matches[0].name
        info["signature"] = "valid" if valid else "INVALID"
    return info
