"""The demo's holders and their certificates, shaped like the health sector's (``directory.sector``).

Every block of ten certificates (``n // 10``) holds:
- slots 0-5: two professionals' CPS-card certificates (authentication, signature, encryption), issued by
  ``ac-personnes``. Subject ``C=FR, title=<profession>, SN=<surname>+CN=<idNat_PS>+GN=<given name>`` (the
  multi-valued RDN last: the RFC 4514 form starts with it), idNat_PS ``8`` + RPPS or ``0`` + ADELI; private
  extensions: product category 00 (card), product type 00 (CPS), profession code.
- slot 6: the block's first professional's software certificate ("mobility": same subject, product
  category 03): it lands in that professional's entry.
- slots 7-9: one organisation's (personne morale) server TLS and server S/MIME certificates and its own
  organisation certificate, issued by ``ac-structures``. Subject ``C=FR, ST=<département>, O=<name>,
  OU=<idNat_Struct>, CN=<host, mailbox or the organisation's name>``, idNat_Struct ``1`` + FINESS or
  ``3`` + SIRET; product category 03.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from directory import certinfo, sector
from directory.demo import issuance
from directory.demo.issuance import CertificateAuthority
from directory.demo.urls import DemoUrls
from directory.hsm.signer import HsmSigner

PERSONNES, STRUCTURES = "ac-personnes", "ac-structures"
GIVEN = ["Hélène", "Jean-Éric", "Françoise", "Noël", "Zoë", "Amélie", "Loïc", "Mathéo", "Inès", "Raphaël"]
SURNAMES = ["DUPONT", "MARTIN", "LEFÈVRE", "N'DIAYE", "DE LA FONTAINE", "GARCÍA", "MÜLLER", "NGUYEN", "BERNARD",
            "PETIT"]
# profession codes (TRE_G15) and the register of each demo profession's identifier
PROFESSIONS = [("10", "RPPS"), ("60", "ADELI"), ("21", "RPPS"), ("50", "RPPS"), ("40", "RPPS"), ("70", "ADELI")]
# (name, département as ST carries it, identifier register): names with DN specials on purpose (, +)
ORGANISATIONS = [("CHU DEMO DE NANTES", "Loire-Atlantique (44)", "FINESS"),
                 ("CENTRE HOSPITALIER DEMO D'ARLES", "Bouches-du-Rhône (13)", "FINESS"),
                 ("LABORATOIRE DEMO BIO+", "Rhône (69)", "SIRET"),
                 ("CLINIQUE DEMO SAINT-LUC, ANNEXE", "Paris (75)", "FINESS")]
CARD_PROFILES = ("authentication", "signature", "encryption")
STRUCTURE_PROFILES = ("server-tls", "server-smime", "organisation")


@dataclass(frozen=True)
class Professional:
    given: str
    surname: str
    profession: str  # TRE_G15 code
    id_nat: str  # 8 + RPPS, 0 + ADELI
    mail: str

    @property
    def subject(self) -> x509.Name:
        multi = x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.SURNAME, self.surname),
                                                x509.NameAttribute(NameOID.COMMON_NAME, self.id_nat),
                                                x509.NameAttribute(NameOID.GIVEN_NAME, self.given)])
        return x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]),
                          x509.RelativeDistinguishedName([x509.NameAttribute(
                              NameOID.TITLE, sector.PROFESSIONS[self.profession])]),
                          multi])


def professional(p: int) -> Professional:
    given, surname = GIVEN[p % len(GIVEN)], SURNAMES[(p // len(GIVEN) + p) % len(SURNAMES)]
    profession, register = PROFESSIONS[p % len(PROFESSIONS)]
    id_nat = f"810{100000000 + p:09d}" if register == "RPPS" else f"0{690000000 + p:09d}"
    return Professional(given, surname, profession, id_nat, f"{ascii_of(given)}.{ascii_of(surname)}.{p}@demo.mssante.fr"
                        .lower())


@dataclass(frozen=True)
class Organisation:
    name: str
    departement: str
    id_nat: str  # 1 + FINESS, 3 + SIRET
    host: str

    def subject(self, cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                          x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, self.departement),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.name),
                          x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, self.id_nat),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def organisation(s: int) -> Organisation:
    """The ``s``-th organisation: names repeat every four, each one numbered beyond (distinct entries)."""
    name, departement, register = ORGANISATIONS[s % len(ORGANISATIONS)]
    name = name if s < len(ORGANISATIONS) else f"{name} {s // len(ORGANISATIONS) + 1}"
    number = departement[-3:-1] + f"{s:07d}"
    id_nat = f"1{number}" if register == "FINESS" else f"3{number}{s % 100000:05d}"
    host = f"srv{s}.{ascii_of(name.split()[-1]).lower()}.demo-sante.fr"
    return Organisation(name, departement, id_nat, host)


def issue_end_entities(hsm: HsmSigner, cas: dict[str, CertificateAuthority], count: int, key_type: str,
                       urls: DemoUrls, first: int = 0, host_keys: bool = False
                       ) -> list[tuple[str, str, x509.Certificate]]:
    """``count`` end entities (issuer, profile, certificate), numbered from ``first`` (see the module's
    blocks of ten): calls with first = 0, count, 2 * count... give distinct holders.

    EE keys are token session objects (their private halves are never needed). RSA key generation in
    SoftHSM2 takes ~0.4 s, so RSA end entities share a pool of 8 keys; EC ones get a key each.
    ``host_keys``: made on the host instead (a token without session objects, such as tpm2-pkcs11).
    """
    pool_size = count if not key_type.startswith("rsa") else min(count, 8)
    if host_keys:
        pool = [_host_key(key_type) for _ in range(max(min(pool_size, 8), 1))]
    else:
        with hsm.admin_session() as session:
            pool = [issuance.generate_key(session, key_type, None, store=False) for _ in range(max(pool_size, 1))]
    now = issuance.utcnow()
    out: list[tuple[str, str, x509.Certificate]] = []
    for n in range(first, first + count):
        block, slot = divmod(n, 10)
        if slot < 7:
            person = professional(2 * block + (slot // 3 if slot < 6 else 0))
            profile = CARD_PROFILES[slot % 3] if slot < 6 else "mobility"
            issuer, subject, emails, dns = PERSONNES, person.subject, [person.mail], []
            codes = ([(sector.PRODUCT_CATEGORY, sector.CATEGORY_CARD), (sector.PRODUCT_TYPE, "00")] if slot < 6
                     else [(sector.PRODUCT_CATEGORY, sector.CATEGORY_SOFTWARE)])
            codes.append((sector.PROFESSION, person.profession))
        else:
            org = organisation(block)
            profile = STRUCTURE_PROFILES[slot - 7]
            cn = {"server-tls": org.host, "server-smime": f"messagerie{block}@{org.host}"}.get(profile, org.name)
            issuer, subject = STRUCTURES, org.subject(cn)
            emails, dns = {"server-tls": ([], [org.host]), "server-smime": ([cn], [])}.get(profile, ([], []))
            codes = [(sector.PRODUCT_CATEGORY, sector.CATEGORY_SOFTWARE)]
        ca = cas[issuer]
        serial = issuance.random_serial()
        spki = pool[n % len(pool)]
        exts = issuance.end_entity_extensions(ca, spki, profile, emails, dns, urls.crl(issuer, serial), urls.ocsp,
                                              urls.ca_issuers(issuer), urls.freshest(issuer), codes)
        cert = issuance.issue(ca, subject, spki, now - issuance.days(1), now + issuance.days(3 * 365), exts,
                              serial=serial)
        out.append((issuer, profile, cert))
    return out


def holder_id(cert: x509.Certificate) -> str | None:
    """The holder's national identifier: the organisation's idNat_Struct (OU), else the professional's."""
    for attr in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        if sector.structure_id_type(str(attr.value)):
            return str(attr.value)
    return certinfo.professional_id(cert.subject)


def _host_key(key_type: str) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    private = (rsa.generate_private_key(65537, 2048) if key_type.startswith("rsa")
               else ec.generate_private_key(ec.SECP256R1()))
    return private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def ascii_of(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isalnum() and c.isascii()) or "x"
