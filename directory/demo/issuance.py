"""The issuance stub: certificates for the demo and the tests, signed in the HSM.

Certificate issuance is not this service's job; this exists so that the demo and the tests have a
realistic hierarchy whose keys never leave SoftHSM2. Names and extensions are built with
``cryptography``'s typed objects (which validate early), the TBSCertificate with asn1crypto, and the
signature through the same ``KeySigner`` that signs CRLs and OCSP responses.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pkcs11
from asn1crypto import core, keys
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, load_der_public_key
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters
from pkcs11.util.rsa import encode_rsa_public_key

from directory import der, sector
from directory.hsm.signer import HsmSigner, KeySigner

OCSP_NOCHECK = ObjectIdentifier("1.3.6.1.5.5.7.48.1.5")
# Demo certificate policies: .1 under the project's 2.25 (UUID) arc, documented in schema/health.schema.
DEMO_POLICY_ARC = "2.25.63614678800275870086993750832056929307.1"
_CURVES = {"P-256": ("1.2.840.10045.3.1.7", 256), "P-384": ("1.3.132.0.34", 384)}


def random_serial() -> int:
    """A positive 127-bit serial (RFC 5280: at most 20 octets, unpredictable)."""
    return secrets.randbits(126) | (1 << 126)


def generate_key(session: pkcs11.Session, key_type: str, label: str | None, store: bool) -> bytes:
    """Generate a key pair inside the token; return the public SubjectPublicKeyInfo DER.

    ``store=True`` keeps it on the token (issuer keys), sensitive and non-extractable.
    ``store=False`` makes a session key: enough to give a demo end entity its own public key.
    """
    private_template = {pkcs11.Attribute.SENSITIVE: True, pkcs11.Attribute.EXTRACTABLE: False,
                        pkcs11.Attribute.SIGN: True}
    if key_type.startswith("rsa"):
        bits = int(key_type[3:] or 2048)

        def make(capabilities: int) -> Any:
            return session.generate_keypair(pkcs11.KeyType.RSA, bits, label=label, store=store,
                                            capabilities=capabilities, private_template=private_template)[0]

        pub = _signing_key(make)
        rsa_key = keys.RSAPublicKey.load(encode_rsa_public_key(pub))
        return keys.PublicKeyInfo({"algorithm": {"algorithm": "rsa"}, "public_key": rsa_key}).dump()
    curve = {"ec": "P-256", "p-256": "P-256", "p-384": "P-384", "ec384": "P-384"}.get(key_type.lower())
    if curve is None:
        raise ValueError(f"unknown key type {key_type!r} (rsa, rsa3072, ec, p-384)")
    params = session.create_domain_parameters(
        pkcs11.KeyType.EC, {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVES[curve][0])},
        local=True)
    return encode_ec_public_key(_signing_key(lambda capabilities: params.generate_keypair(
        label=label, store=store, capabilities=capabilities, private_template=private_template)[0]))


def _signing_key(make: Callable[[int], Any]) -> Any:
    """A key pair that signs and verifies only; tpm2-pkcs11 refuses that template (its keys always carry the
    TPM's decrypt attribute too), so there it also encrypts and decrypts."""
    flags = pkcs11.MechanismFlag
    try:
        return make(flags.SIGN | flags.VERIFY)
    except (pkcs11.exceptions.GeneralError, pkcs11.exceptions.AttributeValueInvalid,
            pkcs11.exceptions.TemplateInconsistent):
        return make(flags.SIGN | flags.VERIFY | flags.ENCRYPT | flags.DECRYPT)


@dataclass
class CertificateAuthority:
    """A CA of the stub: its name, its certificate and the HSM key that signs for it."""

    name: str
    subject: x509.Name
    signer: KeySigner
    spki_der: bytes
    certificate: x509.Certificate | None = None

    @property
    def ski(self) -> bytes:
        return x509.SubjectKeyIdentifier.from_public_key(load_der_public_key(self.spki_der)).digest  # type: ignore[arg-type]


def signer_for_spki(hsm: HsmSigner, label: str, spki_der: bytes, holder: str) -> KeySigner:
    return KeySigner(hsm, label, load_der_public_key(spki_der), None, holder)


def issue(ca: CertificateAuthority, subject: x509.Name, spki_der: bytes, not_before: datetime,
          not_after: datetime, extensions: Sequence[tuple[x509.ExtensionType, bool]],
          serial: int | None = None) -> x509.Certificate:
    """Build the TBSCertificate, sign it with the CA's HSM key, return the parsed certificate."""
    serial = serial if serial is not None else random_serial()
    issuer_name = ca.subject if ca.certificate is None else ca.certificate.subject
    exts = [_extension(value, critical) for value, critical in extensions]
    tbs = ax509.TbsCertificate({
        "version": "v3",
        "serial_number": serial,
        "signature": ca.signer.algorithm_identifier,
        "issuer": ax509.Name.load(issuer_name.public_bytes()),
        "validity": {"not_before": _time(not_before), "not_after": _time(not_after)},
        "subject": ax509.Name.load(subject.public_bytes()),
        "subject_public_key_info": keys.PublicKeyInfo.load(spki_der),
        "extensions": exts,
    })
    tbs_der = tbs.dump()
    body = tbs_der + ca.signer.algorithm_identifier_der + _bitstring(ca.signer.sign(tbs_der))
    cert_der = der.tlv(0x30, body)
    cert = x509.load_der_x509_certificate(cert_der)
    verifier = ca.certificate or cert
    cert.verify_directly_issued_by(verifier)
    return cert


def _extension(value: x509.ExtensionType, critical: bool) -> ax509.Extension:
    """Extension DER from cryptography's typed value (asn1crypto would re-parse a known extnValue)."""
    body = (core.ObjectIdentifier(value.oid.dotted_string).dump() + (b"\x01\x01\xff" if critical else b"")
            + core.OctetString(value.public_bytes()).dump())
    return ax509.Extension.load(der.tlv(0x30, body))


def _time(dt: datetime) -> ax509.Time:
    dt = dt.astimezone(UTC).replace(microsecond=0)
    return ax509.Time({"utc_time" if dt.year < 2050 else "general_time": dt})


def _bitstring(data: bytes) -> bytes:
    return der.tlv(0x03, b"\x00" + data)


def distribution_points(urls: Sequence[str]) -> x509.CRLDistributionPoints:
    """One distribution point per URL, in order (IGC-Santé's certificates: HTTP first, then LDAP)."""
    return x509.CRLDistributionPoints([_point(u) for u in urls])


def freshest_crl(urls: Sequence[str]) -> x509.FreshestCRL:
    """Where the delta CRL is (IGC-Santé: over LDAP only)."""
    return x509.FreshestCRL([_point(u) for u in urls])


def _point(url: str) -> x509.DistributionPoint:
    return x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)


def sector_extensions(codes: Sequence[tuple[x509.ObjectIdentifier, str]]) -> list[tuple[x509.ExtensionType, bool]]:
    """The sector's private extensions (``sector``: product category, type, profession), non-critical."""
    return [(x509.UnrecognizedExtension(oid, sector.encode_code(code)), False) for oid, code in codes]


def authority_info(ocsp_url: str | None, ca_issuers_url: str | None) -> x509.AuthorityInformationAccess:
    descriptions = []
    if ocsp_url:
        descriptions.append(x509.AccessDescription(x509.AuthorityInformationAccessOID.OCSP,
                                                   x509.UniformResourceIdentifier(ocsp_url)))
    if ca_issuers_url:
        descriptions.append(x509.AccessDescription(x509.AuthorityInformationAccessOID.CA_ISSUERS,
                                                   x509.UniformResourceIdentifier(ca_issuers_url)))
    return x509.AuthorityInformationAccess(descriptions)


def ca_extensions(ca_spki: bytes, parent: CertificateAuthority | None, path_length: int | None,
                  crl_urls: Sequence[str], ca_issuers_url: str | None) -> list[tuple[x509.ExtensionType, bool]]:
    public = load_der_public_key(ca_spki)
    exts: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=True, path_length=path_length), True),
        (x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                       encipher_only=False, decipher_only=False), True),
        (x509.SubjectKeyIdentifier.from_public_key(public), False),  # type: ignore[arg-type]
    ]
    if parent is not None:
        exts.append((x509.AuthorityKeyIdentifier(parent.ski, None, None), False))
        exts.append((x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier("2.5.29.32.0"),
                                                                      None)]), False))
    if crl_urls:
        exts.append((distribution_points(crl_urls), False))
    if ca_issuers_url:
        exts.append((authority_info(None, ca_issuers_url), False))
    return exts


def end_entity_extensions(ca: CertificateAuthority, spki_der: bytes, profile: str, emails: Sequence[str],
                          dns_names: Sequence[str], crl_urls: Sequence[str], ocsp_url: str | None,
                          ca_issuers_url: str | None, freshest_urls: Sequence[str] = (),
                          codes: Sequence[tuple[x509.ObjectIdentifier, str]] = ()
                          ) -> list[tuple[x509.ExtensionType, bool]]:
    """Extensions of the demo profiles (shaped like IGC-Santé's card, software and server certificates):
    ``freshest_urls`` where the delta CRL is, ``codes`` the sector's private extensions."""
    ku = dict(digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
              key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)
    eku: list[ObjectIdentifier] = []
    if profile in ("authentication", "mobility", "organisation"):  # card, a person's or an organisation's software
        ku["digital_signature"] = True
        eku = [ExtendedKeyUsageOID.CLIENT_AUTH]
    elif profile == "signature":
        ku["content_commitment"] = True
        eku = [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    elif profile == "encryption":
        ku["key_encipherment"] = True
        ku["data_encipherment"] = True
        eku = [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    elif profile == "server-tls":
        ku["digital_signature"] = True
        ku["key_encipherment"] = True
        eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    elif profile == "server-smime":
        ku["digital_signature"] = True
        ku["key_encipherment"] = True
        eku = [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    elif profile == "ocsp-signing":
        ku["digital_signature"] = True
        eku = [ExtendedKeyUsageOID.OCSP_SIGNING]
    else:
        raise ValueError(f"unknown profile {profile!r}")
    if "ec" in type(load_der_public_key(spki_der)).__name__.lower() and (ku["key_encipherment"]
                                                                       or ku["data_encipherment"]):
        ku["key_encipherment"] = ku["data_encipherment"] = False
        ku["key_agreement"] = True
    public = load_der_public_key(spki_der)
    policy = {"authentication": 1, "signature": 2, "encryption": 3, "server-tls": 4, "server-smime": 5,
              "ocsp-signing": 6, "mobility": 7, "organisation": 8}[profile]
    exts: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(**ku), True),
        (x509.ExtendedKeyUsage(eku), False),
        (x509.SubjectKeyIdentifier.from_public_key(public), False),  # type: ignore[arg-type]
        (x509.AuthorityKeyIdentifier(ca.ski, None, None), False),
        (x509.CertificatePolicies([x509.PolicyInformation(
            x509.ObjectIdentifier(f"{DEMO_POLICY_ARC}.{policy}"), None)]), False),
    ]
    names: list[x509.GeneralName] = [x509.RFC822Name(e) for e in emails] + [x509.DNSName(d) for d in dns_names]
    if names:
        exts.append((x509.SubjectAlternativeName(names), False))
    if profile == "ocsp-signing":
        exts.append((x509.OCSPNoCheck(), False))
    else:
        if crl_urls:
            exts.append((distribution_points(crl_urls), False))
        if freshest_urls:
            exts.append((freshest_crl(freshest_urls), False))
        if ocsp_url or ca_issuers_url:
            exts.append((authority_info(ocsp_url, ca_issuers_url), False))
    return exts + sector_extensions(codes)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def days(n: float) -> timedelta:
    return timedelta(days=n)
