"""How the registry looks in the directory: which entry a certificate belongs to, and what that entry holds.

Pure functions of the certificate and the configured layout (suffix, DN templates). Professionals go under
``ou=Personnes`` (inetOrgPerson + pkiUser + healthProfessional), organisations and servers under
``ou=Structures`` (device + pkiUser + healthStructure), CAs under ``ou=AC`` (cRLDistributionPoint + pkiCA +
deltaCRL, named after the configured issuer, as the demo's CDP/AIA LDAP URLs say). CA and OCSP-responder
certificates are not end entities and get no entry of their own.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID

from directory import sector
from directory.config import LdapConfig
from directory.ldap import dn, syntax

# bump when the mapping below changes: every certificate is projected again
# (2: values the directory's syntax refuses are left out; 3: the identifier in CN, ST, identifier types of
# structures, the organisation and mobility families, templates naming intermediate entries)
PROJECTION_VERSION = "3"
PERSONNES, STRUCTURES, AC = "Personnes", "Structures", "AC"
BRANCHES = (AC, PERSONNES, STRUCTURES)
PERSON_PROFILES = {"authentication", "signature", "encryption", "mobility"}  # the professional's entry
STRUCTURE_PROFILES = {"server-tls", "server-smime", "organisation"}  # the server's, the organisation's entry
NOT_PUBLISHED = {"ca", "ocsp-signing"}

# subject attribute short names usable in templates
SUBJECT_NAMES = {
    NameOID.COMMON_NAME: "CN", NameOID.SURNAME: "SN", NameOID.GIVEN_NAME: "GN", NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.LOCALITY_NAME: "L", NameOID.COUNTRY_NAME: "C",
    NameOID.TITLE: "title", NameOID.SERIAL_NUMBER: "serialNumber", NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.STATE_OR_PROVINCE_NAME: "ST", NameOID.USER_ID: "UID",
}
SINGLE_VALUED = {"healthidentifiertype", "healthstructureidtype"}
BINARY = {"usercertificate", "cacertificate", "certificaterevocationlist", "authorityrevocationlist",
          "deltarevocationlist"}
CERTIFICATE_ATTRIBUTE = "userCertificate;binary"


@functools.lru_cache(maxsize=1024)
def base_name(attribute: str) -> str:
    """Comparison name of an attribute description: lower case, options (``;binary``) dropped."""
    return attribute.split(";", 1)[0].lower()


@dataclass(frozen=True)
class Layout:
    suffix: str
    person_templates: tuple[dn.DnTemplate, ...]
    structure_templates: tuple[dn.DnTemplate, ...]
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        text = json.dumps([PROJECTION_VERSION, dn.key(self.suffix), [t.text for t in self.person_templates],
                           [t.text for t in self.structure_templates]])
        object.__setattr__(self, "digest", hashlib.sha256(text.encode()).hexdigest()[:16])

    @property
    def has_containers(self) -> bool:
        """Whether a template names intermediate entries (else every entry sits right under its branch)."""
        return any(len(t.rdns) > 1 for t in (*self.person_templates, *self.structure_templates))

    @classmethod
    def from_config(cls, ldap: LdapConfig) -> Layout:
        return cls(ldap.suffix, tuple(dn.DnTemplate.parse(t) for t in ldap.person_dn),
                   tuple(dn.DnTemplate.parse(t) for t in ldap.structure_dn))

    def branch_dn(self, branch: str) -> str:
        return f"ou={branch},{self.suffix}"

    def ca_dn(self, issuer: str) -> str:
        return f"cn={dn.escape_value(issuer)},{self.branch_dn(AC)}"


@dataclass(frozen=True)
class Projection:
    """Where one certificate shows, and the entry attributes it contributes (without the certificate)."""

    dn: str
    dn_key: str
    attributes: dict[str, list[str]]
    omitted: tuple[tuple[str, str, str], ...] = ()  # (attribute, value, reason): left out, the directory refuses it


def subject_values(name: x509.Name) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for attr in name:
        short = SUBJECT_NAMES.get(attr.oid)
        if short is not None and isinstance(attr.value, str):
            values.setdefault(short, []).append(attr.value)
    return values


def project(der: bytes, profile: str | None, emails: list[str], layout: Layout) -> Projection | None:
    """The entry a certificate belongs to, or None (CA/OCSP certificates; no template fits its subject)."""
    if profile in NOT_PUBLISHED:
        return None
    return project_name(x509.load_der_x509_certificate(der).subject, profile, emails, layout)


def project_name(name: x509.Name, profile: str | None, emails: list[str], layout: Layout) -> Projection | None:
    """``project`` for a subject already parsed (at import).

    Values the directory would refuse (``syntax``: an empty title, a non-ASCII mail, ...) are left out and
    listed in ``omitted``; the rest of the entry is kept. Naming values are checked the same way: a template
    whose value is refused is skipped like one whose attribute is missing."""
    if profile in NOT_PUBLISHED:
        return None
    omitted: list[tuple[str, str, str]] = []
    subject = _usable(subject_values(name), omitted)
    first = {k: v[0] for k, v in subject.items()}
    mail = next((e for e in emails if syntax.problem("mail", e) is None), None)
    if mail is not None:
        first.setdefault("mail", mail)
    # the identifiers wherever the subject carries them (serialNumber or a card's CN; an OU)
    first.update((name, ids[0]) for name, ids in (("healthProfessionalId", _professional_ids(subject)),
                                                  ("healthStructureId", _structure_ids(subject))) if ids)
    person = profile in PERSON_PROFILES if profile in PERSON_PROFILES | STRUCTURE_PROFILES \
        else bool(_professional_ids(subject))
    branch, templates = (PERSONNES, layout.person_templates) if person else (STRUCTURES, layout.structure_templates)
    rdns = next((r for r in (t.render(first) for t in templates)
                 if r is not None and all(syntax.problem(a, v) is None for rdn in r for a, v in rdn)), None)
    if rdns is None:
        return None
    attributes = _person(subject, emails) if person else _structure(subject, emails)
    if "cn" not in attributes:
        return None  # no name the directory accepts: reported as not placed
    for attr, value in rdns[0]:  # the entry's naming values must be in the entry
        values = attributes.setdefault(_canonical(attr, attributes), [])
        if dn.fold(value) not in {dn.fold(v) for v in values}:
            values.append(value)
    entry_dn = dn.build(rdns) + "," + layout.branch_dn(branch)
    return Projection(entry_dn, dn.key(entry_dn), syntax.clean(attributes, omitted), tuple(omitted))


def _usable(subject: dict[str, list[str]], omitted: list[tuple[str, str, str]]) -> dict[str, list[str]]:
    """Subject values without the blank ones (so that a blank CN falls back like a missing one). Each
    target attribute's own syntax is checked later, on the entry (``syntax.clean``)."""
    out: dict[str, list[str]] = {}
    for name, values in subject.items():
        for value in values:
            if value.strip():
                out.setdefault(name, []).append(value)
            else:
                omitted.append((name, value, "empty" if not value else "blank"))
    return out


def _canonical(attr: str, attributes: dict[str, list[str]]) -> str:
    for existing in attributes:
        if existing.lower() == attr.lower():
            return existing
    return attr


def _professional_ids(subject: dict[str, list[str]]) -> list[str]:
    """The subject serialNumber, else (a card certificate: ``SN=…+CN=<idNat_PS>+GN=…``) a CN shaped like a
    national identifier in a person's subject (as ``certinfo.professional_id`` reads it)."""
    if subject.get("serialNumber"):
        return list(subject["serialNumber"])
    cn = subject.get("CN", [])
    if cn and (subject.get("SN") or subject.get("GN")) and sector.is_id_nat(cn[0]):
        return cn[:1]
    return []


def _structure_ids(subject: dict[str, list[str]]) -> list[str]:
    """Numeric OUs: an idNat_Struct (``1`` + FINESS, ``3`` + SIRET...), or a bare FINESS, SIRET or SIREN."""
    return [v for v in subject.get("OU", []) if v.isdigit()]


def _person(subject: dict[str, list[str]], emails: list[str]) -> dict[str, list[str]]:
    """inetOrgPerson needs cn and sn: without a usable one, no ``cn`` (the caller then places nothing)."""
    full_name = " ".join(subject.get("GN", []) + subject.get("SN", []))
    cn = subject.get("CN") or [full_name]
    if not cn[0].strip():
        return {}
    attrs: dict[str, list[str]] = {"objectClass": ["top", "inetOrgPerson", "pkiUser"], "cn": cn,
                                   "sn": subject.get("SN") or cn}
    for source, target in (("GN", "givenName"), ("title", "title"), ("O", "o"), ("OU", "ou"), ("L", "l"),
                           ("ST", "st")):
        if subject.get(source):
            attrs[target] = list(subject[source])
    if emails:
        attrs["mail"] = list(emails)
    ids = _professional_ids(subject)
    if ids:
        attrs["objectClass"].append("healthProfessional")
        attrs["healthProfessionalId"] = ids
        kind = sector.professional_id_type(ids[0])
        if kind:
            attrs["healthIdentifierType"] = [kind]
        if subject.get("title"):
            attrs["healthProfession"] = list(subject["title"])
        if not subject.get("serialNumber") and full_name.strip():
            attrs["displayName"] = [full_name]  # cn is the identifier: the name a person reads
    return attrs


def _structure(subject: dict[str, list[str]], emails: list[str]) -> dict[str, list[str]]:
    attrs: dict[str, list[str]] = {"objectClass": ["top", "device", "pkiUser", "healthStructure"],
                                   "cn": subject.get("CN") or subject.get("O") or ["-"]}
    for source, target in (("O", "o"), ("OU", "ou"), ("L", "l"), ("ST", "st")):
        if subject.get(source):
            attrs[target] = list(subject[source])
    if emails:
        attrs["mail"] = list(emails)
    ids = _structure_ids(subject)
    if ids:
        attrs["healthStructureId"] = ids
        kind = sector.structure_id_type(ids[0])
        if kind:
            attrs["healthStructureIdType"] = [kind]
    return attrs


@dataclass
class DesiredEntry:
    """What one directory entry must hold. Certificates are kept as (id, sha256) until bytes are needed."""

    dn: str
    attributes: dict[str, list[str]] = field(default_factory=dict)
    certificates: dict[bytes, int] = field(default_factory=dict)  # sha256 digest -> certificate id
    binary: dict[str, list[bytes]] = field(default_factory=dict)  # CA entries: cACertificate, CRLs
    _encoded: dict[str, list[bytes]] | None = field(default=None, repr=False, compare=False)

    def encoded(self) -> dict[str, list[bytes]]:
        """{comparison name: value bytes} of everything but the certificates (computed once)."""
        if self._encoded is None:
            out = {base_name(n): [v.encode() for v in values] for n, values in self.attributes.items() if values}
            out.update((base_name(n), values) for n, values in self.binary.items())
            self._encoded = out
        return self._encoded

    def merge(self, attributes: dict[str, list[str]]) -> None:
        """Union of the values each certificate contributes (single-valued: the first one, newest first).
        The first merge takes ``attributes`` as is (callers pass a fresh object: the JSON just loaded)."""
        self._encoded = None
        if not self.attributes:
            self.attributes = attributes
            return
        for name, values in attributes.items():
            current = self.attributes.setdefault(_canonical(name, self.attributes), [])
            if name.lower() in SINGLE_VALUED and current:
                continue
            seen = {dn.fold(v) for v in current}
            for value in values:
                if dn.fold(value) not in seen:
                    current.append(value)
                    seen.add(dn.fold(value))


def ca_entry(layout: Layout, issuer: str, certificate: bytes, crl: bytes | None, is_arl: bool,
             delta: bytes | None) -> DesiredEntry:
    entry = DesiredEntry(layout.ca_dn(issuer), {"objectClass": ["top", "cRLDistributionPoint", "pkiCA", "deltaCRL"],
                                                "cn": [issuer]})
    entry.binary["cACertificate;binary"] = [certificate]
    if crl is not None:
        entry.binary["certificateRevocationList;binary"] = [crl]
        if is_arl:
            entry.binary["authorityRevocationList;binary"] = [crl]
    if delta is not None:
        entry.binary["deltaRevocationList;binary"] = [delta]
    return entry


def projection_row(projection: Projection | None) -> tuple[str | None, str | None, str | None]:
    """(dn_key, dn, attributes JSON) as the registry keeps it (all None: not in the directory)."""
    if projection is None:
        return None, None, None
    return projection.dn_key, projection.dn, json.dumps(projection.attributes)


def omitted_text(omitted: tuple[tuple[str, str, str], ...]) -> str:
    """``title '' (empty), mail 'é@x' (not ASCII (IA5String))``: for a warning (values shortened, escaped)."""
    return ", ".join(f"{name} {_short(value)} ({reason})" for name, value, reason in omitted)


def _short(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "…")
