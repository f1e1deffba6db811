"""The demo's certification policies: a short document per CA (served at ``/pc/``) and its configuration."""

from __future__ import annotations

from pathlib import Path

from cryptography.x509.oid import NameOID

from directory.demo import issuance
from directory.demo.issuance import CertificateAuthority


def write_policies(folder: Path, cas: dict[str, CertificateAuthority]) -> None:
    """A real CA publishes its PC/DPC documents; the demo's say what they are: demonstrations."""
    folder.mkdir(exist_ok=True)
    for name, ca in cas.items():
        cn = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        (folder / f"pc-{name}.txt").write_text(
            f"Politique de certification - {cn}\n\nDocument de DÉMONSTRATION : cette autorité de certification "
            f"n'émet que des certificats de test, sans valeur.\nIdentifiant de la politique (OID) : "
            f"{issuance.DEMO_POLICY_ARC}\n\nCertification policy - {cn}: a DEMONSTRATION document; this CA issues "
            "test certificates only.\n")


def policies_table(name: str) -> str:
    """The ``[[issuers.policies]]`` table of one CA in the demo's configuration."""
    return (f'\n[[issuers.policies]]\ntitle = "Politique de certification {name} (démonstration)"\n'
            f'file = "pc/pc-{name}.txt"\noid = "{issuance.DEMO_POLICY_ARC}"\n')
