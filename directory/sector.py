"""The health sector's conventions for certificates, in one place: national identifiers and private extensions.

Public conventions of the French health-sector PKI (ANS nomenclatures), read by the registry (``certinfo``),
the directory projection and the demo's issuance stub:

- idNat_PS, a professional's national identifier as card certificates carry it (in the subject CN, or a
  serialNumber): a type digit, then the number: ``8`` + RPPS (11 digits), ``0`` + ADELI (9 characters).
- idNat_Struct, an organisation's (in the subject OU): ``1`` + FINESS, ``2`` + SIREN, ``3`` + SIRET,
  ``0`` + ADELI or ``4`` + RPPS of a practice.
- private extensions named by the nomenclatures' OIDs under 1.2.250.1.71.1.2, each holding a code as a
  string: ``.5`` product category (TRE_G01: 00 card, 03 software certificate; 80/83 their TEST forms), ``.2``
  product type (TRE_G02: 00 CPS, ...), ``.7`` profession (TRE_G15: 10 médecin, 40 chirurgien-dentiste, ...).
"""

from __future__ import annotations

import re

from cryptography import x509

from directory import der

PROFESSIONAL_ID_TYPES = {"8": "RPPS", "0": "ADELI"}
STRUCTURE_ID_TYPES = {"1": "FINESS", "2": "SIREN", "3": "SIRET", "0": "ADELI", "4": "RPPS"}
_STRUCTURE_ID_LENGTHS = {"1": 10, "2": 10, "3": 15, "0": 10}  # so that a bare FINESS or SIRET is not typed

NOMENCLATURES = "1.2.250.1.71.1.2"
PRODUCT_TYPE = x509.ObjectIdentifier(f"{NOMENCLATURES}.2")
PRODUCT_CATEGORY = x509.ObjectIdentifier(f"{NOMENCLATURES}.5")
PROFESSION = x509.ObjectIdentifier(f"{NOMENCLATURES}.7")
CATEGORY_CARD, CATEGORY_SOFTWARE = "00", "03"
SOFTWARE_CATEGORIES = {"03", "83"}  # a software certificate, real or TEST
PROFESSIONS = {"10": "Médecin", "21": "Pharmacien", "40": "Chirurgien-dentiste", "50": "Sage-femme",
               "60": "Infirmier", "70": "Masseur-kinésithérapeute"}

# a type digit then letters and digits (an establishment's staff: FINESS "/" local number): never a name
_ID_NAT = re.compile(r"[0-9][0-9A-Za-z]{7,40}(/[0-9A-Za-z]{1,20})?")
_STRING_TAGS = {0x0C, 0x13, 0x16}  # UTF8String, PrintableString, IA5String
_CODE = re.compile(r"[0-9A-Za-z]{1,8}")


def is_id_nat(value: str) -> bool:
    """Whether ``value`` has the shape of a national identifier (idNat_PS or idNat_Struct)."""
    return _ID_NAT.fullmatch(value) is not None


def professional_id_type(value: str) -> str | None:
    """``RPPS`` for ``8…``, ``ADELI`` for ``0…``; None for another prefix or a value that is no identifier."""
    return PROFESSIONAL_ID_TYPES.get(value[:1]) if is_id_nat(value) else None


def structure_id_type(value: str) -> str | None:
    """``FINESS`` for ``1`` + a FINESS number, ... (of the expected length); None for anything else."""
    if not is_id_nat(value) or len(value) != _STRUCTURE_ID_LENGTHS.get(value[:1], len(value)):
        return None
    return STRUCTURE_ID_TYPES.get(value[:1])


def encode_code(code: str) -> bytes:
    """A private extension's extnValue content: the code as a PrintableString."""
    if not _CODE.fullmatch(code):
        raise ValueError(f"not a nomenclature code: {code!r}")
    return der.tlv(0x13, code.encode("ascii"))


def code(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    """The code a private extension carries, or None (absent, or not one short string: read strictly)."""
    try:
        value = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    data = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    if len(data) < 2 or data[0] not in _STRING_TAGS or data[1] != len(data) - 2:
        return None
    try:
        text = data[2:].decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if _CODE.fullmatch(text) else None
