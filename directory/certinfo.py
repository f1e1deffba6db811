"""What the registry and the directory need to know about a certificate, read once at import."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from directory import sector, serials

# card certificates of professionals (authentication, signature, encryption), software certificates of
# professionals ("mobility"), of organisations (personnes morales: "organisation") and of their servers
PROFILES = ("authentication", "signature", "encryption", "mobility", "organisation", "server-tls", "server-smime",
            "ocsp-signing", "ca")

# Attribute names for the types cryptography prints as dotted OIDs (``2.5.4.4=DUPONT``): OpenSSL's short
# names, what `openssl x509 -subject -nameopt RFC2253` prints and what operators compare against.
ATTRIBUTE_NAMES = {
    NameOID.SURNAME: "SN", NameOID.GIVEN_NAME: "GN", NameOID.TITLE: "title", NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.EMAIL_ADDRESS: "emailAddress", NameOID.INITIALS: "initials", NameOID.PSEUDONYM: "pseudonym",
    NameOID.GENERATION_QUALIFIER: "generationQualifier", NameOID.DN_QUALIFIER: "dnQualifier",
    NameOID.POSTAL_CODE: "postalCode", NameOID.BUSINESS_CATEGORY: "businessCategory",
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier", NameOID.X500_UNIQUE_IDENTIFIER: "x500UniqueIdentifier",
    NameOID.JURISDICTION_COUNTRY_NAME: "jurisdictionC", NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME: "jurisdictionST",
    NameOID.JURISDICTION_LOCALITY_NAME: "jurisdictionL", NameOID.UNSTRUCTURED_NAME: "unstructuredName",
}
_DOTTED_TYPE = re.compile(r"(?:^|[^\\][,+])\d+(?:\.\d+)+=")


def subject_text(name: x509.Name) -> str:
    """RFC 4514 text of a name with attribute names, not dotted OIDs, exactly as ``openssl x509 -nameopt
    RFC2253`` prints it: last RDN first and, inside a multi-valued RDN, its values in reverse order too
    (``CN=8100…+GN=JEAN+SN=DUPONT,title=…,C=FR``; RFC 4514 gives that order no meaning, operators compare
    with openssl's)."""
    return ",".join("+".join(attribute.rfc4514_string(ATTRIBUTE_NAMES) for attribute in reversed(list(rdn)))
                    for rdn in reversed(name.rdns))


def readable_dn(text: str | None) -> str | None:
    """A stored RFC 4514 text with the attribute names above (rows imported before they were used)."""
    if not text or not _DOTTED_TYPE.search(text):
        return text
    try:
        return subject_text(x509.Name.from_rfc4514_string(text))
    except ValueError:
        return text


@dataclass(frozen=True)
class CertificateInfo:
    serial: int
    serial_hex: str
    subject_dn: str
    emails: tuple[str, ...]
    dns_names: tuple[str, ...]
    professional_id: str | None
    not_before: int
    not_after: int
    der: bytes
    sha256: str
    profile: str
    subject: x509.Name | None = field(default=None, compare=False, repr=False)  # parsed once, for the directory


def describe(cert: x509.Certificate, der: bytes | None = None) -> CertificateInfo:
    """Extract the registry fields; raise ``ValueError`` with a precise reason when something is off."""
    der = der if der is not None else cert.public_bytes(Encoding.DER)
    serial = cert.serial_number
    serials.check(serial)
    emails: list[str] = []
    dns: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        emails.extend(san.get_values_for_type(x509.RFC822Name))
        dns.extend(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    for attr in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        if attr.value not in emails:
            emails.append(str(attr.value))
    return CertificateInfo(
        serial=serial,
        serial_hex=serials.to_hex(serial),
        subject_dn=subject_text(cert.subject),
        emails=tuple(e.lower() for e in emails),
        dns_names=tuple(d.lower() for d in dns),
        professional_id=professional_id(cert.subject),
        not_before=int(cert.not_valid_before_utc.timestamp()),
        not_after=int(cert.not_valid_after_utc.timestamp()),
        der=der,
        sha256=hashlib.sha256(der).hexdigest(),
        profile=profile_of(cert),
        subject=cert.subject,
    )


def professional_id(subject: x509.Name) -> str | None:
    """A professional's national identifier: the subject serialNumber, else a CN shaped like an idNat_PS
    (``8`` + RPPS, as card certificates carry it) in a natural person's subject."""
    ids = subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if ids:
        return str(ids[0].value)
    if not natural_person(subject):
        return None
    cns = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return cns[0] if cns and sector.is_id_nat(cns[0]) else None


def natural_person(subject: x509.Name) -> bool:
    """A person's subject: a surname, a given name or a serialNumber identifier."""
    return any(subject.get_attributes_for_oid(oid) for oid in (NameOID.SURNAME, NameOID.GIVEN_NAME,
                                                               NameOID.SERIAL_NUMBER))


def _organisation(subject: x509.Name) -> bool:
    """An organisation's subject: no person in it, and an OU holding an idNat_Struct (``1`` + FINESS, ...)."""
    units = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return not natural_person(subject) and any(sector.structure_id_type(str(a.value)) for a in units)


def profile_of(cert: x509.Certificate) -> str:
    """Classify by extensions and subject, the way IGC-Santé-like profiles (and the demo's stub) shape them:
    a natural person's software certificate (product category 03) is ``mobility``; an organisation's
    certificate that is not a server's is ``organisation``."""
    ext = cert.extensions
    try:
        if ext.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "ca"
    except x509.ExtensionNotFound:
        pass
    try:
        eku = set(ext.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        eku = set()
    if ExtendedKeyUsageOID.OCSP_SIGNING in eku:
        return "ocsp-signing"
    if ExtendedKeyUsageOID.SERVER_AUTH in eku:
        return "server-tls"
    try:
        ku = ext.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    # S/MIME of a server (an EC key agrees keys where an RSA one enciphers them)
    smime = ExtendedKeyUsageOID.EMAIL_PROTECTION in eku and ku is not None and ku.digital_signature \
        and (ku.key_encipherment or ku.key_agreement)
    if natural_person(cert.subject) and sector.code(cert, sector.PRODUCT_CATEGORY) in sector.SOFTWARE_CATEGORIES:
        return "mobility"
    if _organisation(cert.subject) and not smime:
        return "organisation"
    if ku is not None and ku.content_commitment:
        return "signature"
    if smime:
        return "server-smime"
    if ku is not None and not ku.digital_signature and (ku.key_encipherment or ku.key_agreement):
        return "encryption"
    return "authentication"


def epoch(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())

