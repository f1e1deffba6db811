"""``annuaire init-demo DIR``: a health-sector-shaped hierarchy, ready to serve.

Layout of DIR (a contract: tests, make run and operators' scripts read it):
  annuaire.toml          config marked ``demo = true`` (written last: its presence means "complete")
  hsm/                   private SoftHSM2 token (softhsm2.conf, tokens/, pin 0600); absent when the demo
                         is built on an existing token (--pkcs11-module, --token-label, --pin-file)
  secrets/ldap-password  bind password of the managed slapd (0600)
  secrets/admin-token    bearer token of the admin API (0600)
  ca/NAME.pem            root, issuing CAs and OCSP signers; ca/chain.pem = root + issuing CAs
  ca/ac-racine.crl       the root's ARL, signed at init (the root key is then destroyed: the root is offline)
  certs/*.pem            end entities; certs/manifest.json lists {file, issuer, serial_hex, profile, status, reason,
                         holder} (holder: the national identifier, idNat_PS or idNat_Struct)
  pc/pc-NAME.txt         each CA's (demonstration) certification policy, served at /pc/ and linked from the page
  data/registry.sqlite3  the registry, with the end entities imported and ~10% revoked, one on hold
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from directory.config import Config, load_config
from directory.demo import ceremony, issuance
from directory.demo.holders import PERSONNES, STRUCTURES, holder_id, issue_end_entities
from directory.demo.issuance import CertificateAuthority
from directory.demo.policies import policies_table, write_policies
from directory.demo.urls import LDAP_SUFFIX, DemoUrls
from directory.hsm.signer import HsmSettings, HsmSigner
from directory.hsm.softhsm import create_token, find_module
from directory.ingest.importer import ImportSummary
from directory.ingest.sources import SourceItem
from directory.runtime import importer_for, open_config_registry
from directory.serials import to_hex

TOKEN_LABEL = "annuaire-demo"
ROOT = "ac-racine"
__all__ = ["LDAP_SUFFIX", "PERSONNES", "STRUCTURES", "DemoUrls", "issue_end_entities"]  # for tests and bench/
_MARKERS = {"hsm", "ca", "certs", "data", "secrets", "pc", "annuaire.toml"}
REASONS = ["keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation", "privilegeWithdrawn",
           "unspecified"]


class DemoError(RuntimeError):
    """init-demo cannot proceed (e.g. the directory holds a non-demo configuration)."""


@dataclass(frozen=True)
class DemoToken:
    """An existing (empty) token to build the demo on instead of a private SoftHSM2 one."""

    module: str
    label: str
    pin_file: Path


@dataclass(frozen=True)
class DemoOptions:
    directory: Path
    certs: int = 200
    key_type: str = "rsa"
    http_port: int = 8080
    ldap_port: int = 3890
    crl_partitions: int = 0
    admin_port: int = 8443
    token: DemoToken | None = None


def _name(*pairs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


def _ca_name(cn: str) -> x509.Name:
    """Shaped like IGC-Santé's CA names (``C=FR, O=…, OU=0002 <SIREN>, OU=IGC-SANTE, CN=AC …``), DEMO all
    through: the project's own organisation name and a SIREN of zeros, never the agency's."""
    return _name((NameOID.COUNTRY_NAME, "FR"), (NameOID.ORGANIZATION_NAME, "ANNUAIRE SANTE DEMO"),
                 (NameOID.ORGANIZATIONAL_UNIT_NAME, "0002 000000000"),
                 (NameOID.ORGANIZATIONAL_UNIT_NAME, "IGC-SANTE DEMO"), (NameOID.COMMON_NAME, cn))


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _prepare_directory(directory: Path) -> bool:
    """True when a complete demo is already there. Refuse non-demo configs; clear a half-built demo."""
    config_file = directory / "annuaire.toml"
    if config_file.exists():
        try:
            config = load_config(config_file)
        except Exception as exc:
            raise DemoError(f"{config_file} exists and is not a valid demo configuration: {exc}") from exc
        if not config.demo:
            raise DemoError(f"{config_file} is not marked 'demo = true': the issuance stub refuses to touch it")
        return True
    if directory.exists():
        leftovers = {p.name for p in directory.iterdir()}
        if leftovers - _MARKERS:
            raise DemoError(f"{directory} exists and holds files that are not a demo's: {sorted(leftovers - _MARKERS)}")
        for name in leftovers:  # an interrupted init-demo: start again from scratch
            target = directory / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    return False


def init_demo(options: DemoOptions, say: Callable[[str], None] = lambda _: None) -> Path:
    """Build the demo under ``options.directory``; return the config path. Idempotent."""
    directory = options.directory.resolve()
    config_file = directory / "annuaire.toml"
    if _prepare_directory(directory):
        say(f"demo already initialised in {directory}")
        return config_file
    if options.token is None:
        token = create_token(directory / "hsm", TOKEN_LABEL)
        hsm = HsmSigner(HsmSettings(token.module, TOKEN_LABEL, token.pin(), 2, softhsm2_conf=str(token.conf)))
    else:
        pin = options.token.pin_file.read_text().strip()
        hsm = HsmSigner(HsmSettings(options.token.module, options.token.label, pin, 2))
    try:
        urls = DemoUrls(f"http://127.0.0.1:{options.http_port}", f"ldap://127.0.0.1:{options.ldap_port}",
                        options.crl_partitions, frozenset({PERSONNES}))  # deltas: as _write_config sets them
        say(f"generating CA keys ({options.key_type}) in the token")
        cas, ocsp_certs = _build_hierarchy(hsm, options.key_type, urls)
        ca_dir = directory / "ca"
        ca_dir.mkdir(exist_ok=True)
        for ca in cas.values():
            assert ca.certificate is not None
            (ca_dir / f"{ca.name}.pem").write_bytes(issuance.pem(ca.certificate))
        for name, cert in ocsp_certs.items():
            (ca_dir / f"{name}.pem").write_bytes(issuance.pem(cert))
        (ca_dir / "chain.pem").write_bytes(b"".join(issuance.pem(ca.certificate) for ca in cas.values()
                                                    if ca.certificate is not None))
        arl = ceremony.offline_root(hsm, cas[ROOT], say)
        (ca_dir / f"{ROOT}.crl").write_bytes(arl)
        _write_private(directory / "secrets" / "ldap-password", secrets.token_urlsafe(18) + "\n")
        _write_private(directory / "secrets" / "admin-token", secrets.token_urlsafe(32) + "\n")
        write_policies(directory / "pc", cas)
        _write_config(config_file.with_suffix(".toml.tmp"), options)
        config = load_config(config_file.with_suffix(".toml.tmp"))
        say(f"issuing {options.certs} end-entity certificates")
        _populate(config, hsm, cas, ocsp_certs, directory, options, urls)
        ceremony.publish_arl(config, ROOT, arl)
        os.replace(config_file.with_suffix(".toml.tmp"), config_file)
    finally:
        hsm.close()
    say(f"demo ready: {config_file}")
    return config_file


def _build_hierarchy(hsm: HsmSigner, key_type: str, urls: DemoUrls
                     ) -> tuple[dict[str, CertificateAuthority], dict[str, x509.Certificate]]:
    now = issuance.utcnow()
    spkis: dict[str, bytes] = {}
    with hsm.admin_session() as session:
        for label in (ROOT, PERSONNES, STRUCTURES, f"ocsp-{PERSONNES}", f"ocsp-{STRUCTURES}"):
            spkis[label] = issuance.generate_key(session, key_type, label, store=True)
    subjects = {ROOT: _ca_name("AC RACINE SANTE DEMO"), PERSONNES: _ca_name("AC SANTE DEMO PERSONNES"),
                STRUCTURES: _ca_name("AC SANTE DEMO ORGANISATIONS")}
    cas = {name: CertificateAuthority(name, subjects[name],
                                      issuance.signer_for_spki(hsm, name, spkis[name], name), spkis[name])
           for name in (ROOT, PERSONNES, STRUCTURES)}
    root = cas[ROOT]
    root.certificate = issuance.issue(root, root.subject, root.spki_der, now - issuance.days(1),
                                      now + issuance.days(365 * 20),
                                      issuance.ca_extensions(root.spki_der, None, 1, [], None))
    for name in (PERSONNES, STRUCTURES):
        ca = cas[name]
        ca.certificate = issuance.issue(root, ca.subject, ca.spki_der, now - issuance.days(1),
                                        now + issuance.days(365 * 10),
                                        issuance.ca_extensions(ca.spki_der, root, 0, urls.crl(ROOT),
                                                               urls.ca_issuers(ROOT)))
    ocsp: dict[str, x509.Certificate] = {}
    for name in (PERSONNES, STRUCTURES):
        label = f"ocsp-{name}"
        subject = _ca_name(f"OCSP {subjects[name].get_attributes_for_oid(NameOID.COMMON_NAME)[0].value}")
        ocsp[label] = issuance.issue(
            cas[name], subject, spkis[label], now - issuance.days(1), now + issuance.days(365),
            issuance.end_entity_extensions(cas[name], spkis[label], "ocsp-signing", [], [], [], None, None))
    return cas, ocsp


def _hsm_section(options: DemoOptions) -> str:
    if options.token is None:
        return (f'module = "{find_module()}"\ntoken_label = "{TOKEN_LABEL}"\npin_file = "hsm/pin"\n'
                'softhsm2_conf = "hsm/softhsm2.conf"\n')
    t = options.token
    return f'module = "{t.module}"\ntoken_label = "{t.label}"\npin_file = "{t.pin_file.resolve()}"\n'


def _write_config(path: Path, options: DemoOptions) -> None:
    def crl_table(name: str) -> str:
        if name == ROOT:  # offline: its ARL is signed at init-demo (the key ceremony), then published
            return ('\n[issuers.crl]\nexpiry_warning = "30d"   # warn this long before the ARL\'s nextUpdate\n')
        lines = ["on_revocation_delay = 5"]
        if name != ROOT and options.crl_partitions:
            lines.append(f"partitions = {options.crl_partitions}")
        if name == PERSONNES:
            lines += ["delta = true", 'delta_interval = "5m"']
        text = "\n[issuers.crl]\n" + "\n".join(lines) + "\n"
        if name != ROOT:  # the issuing CAs answer OCSP through their delegated responder
            text += (f'\n[issuers.ocsp]\nsigner_certificate = "ca/ocsp-{name}.pem"\n'
                     f'signer_key_label = "ocsp-{name}"\n')
        return text

    def key(name: str) -> str:
        if name == ROOT:
            return "# no key_label: the root is offline (its key was destroyed after signing the ARL)\n"
        return f'key_label = "{name}"\n'

    issuers = "".join(f'\n[[issuers]]\nname = "{name}"\ncertificate = "ca/{name}.pem"\n' + key(name) + crl_table(name)
                      + policies_table(name) for name in (ROOT, PERSONNES, STRUCTURES))
    path.write_text(
        "# Written by `annuaire init-demo`: a DEMO configuration. Keys live in the private SoftHSM2 token\n"
        "# under hsm/; the PIN and the LDAP password are in files readable only by their owner.\n"
        "demo = true\n"
        'data_dir = "data"\n\n'
        "[hsm]\n"
        + _hsm_section(options)
        + "max_concurrent = 2\n\n"
        "[http]\n"
        f'listen = "127.0.0.1:{options.http_port}"\n'
        f'base_url = "http://127.0.0.1:{options.http_port}"\n\n'
        "[ldap]\n"
        f'urls = ["ldap://127.0.0.1:{options.ldap_port}"]\n'
        f'bind_dn = "cn=annuaire,{LDAP_SUFFIX}"\n'
        'password_file = "secrets/ldap-password"\n'
        f'suffix = "{LDAP_SUFFIX}"\n'
        "managed = true\n\n"
        "# The admin API (import, revoke, release, look up): loopback, bearer token from the file.\n"
        "[admin]\n"
        f'listen = "127.0.0.1:{options.admin_port}"\n'
        'token_file = "secrets/admin-token"\n'
        + issuers
    )


def _populate(config: Config, hsm: HsmSigner, cas: dict[str, CertificateAuthority],
              ocsp_certs: dict[str, x509.Certificate], directory: Path, options: DemoOptions,
              urls: DemoUrls) -> None:
    registry = open_config_registry(config)
    importer = importer_for(config, registry, actor="init-demo")
    certs_dir = directory / "certs"
    certs_dir.mkdir(exist_ok=True)
    issued = issue_end_entities(hsm, cas, options.certs, options.key_type, urls,
                                host_keys=options.token is not None)
    manifest = []
    for cert in [*(ca.certificate for ca in cas.values() if ca.name != ROOT), *ocsp_certs.values()]:
        assert cert is not None
        importer.import_der(cert.public_bytes(Encoding.DER))
    items = []
    for n, (issuer, profile, cert) in enumerate(issued):
        filename = f"{profile}-{n:05d}.pem"
        (certs_dir / filename).write_bytes(issuance.pem(cert))
        items.append((n, SourceItem(filename, der=cert.public_bytes(Encoding.DER))))
        manifest.append({"file": filename, "issuer": issuer, "serial_hex": to_hex(cert.serial_number),
                         "profile": profile, "holder": holder_id(cert)})
    summary = ImportSummary()
    importer.import_items(iter(items), summary)  # batches of 500 per transaction
    if summary.refused:
        raise DemoError(f"the demo's own certificates were refused: {summary.refused[:3]}")
    revoke_every = 10
    hold_done = False
    for n, entry in enumerate(manifest):
        if n % revoke_every == (3 if (n // revoke_every) % 2 == 0 else 8):
            reason = REASONS[(n // revoke_every) % len(REASONS)]
            at = int(issuance.utcnow().timestamp()) - 3600
            invalidity = at - 86400 if reason == "keyCompromise" else None
            registry.revoke(entry["issuer"], entry["serial_hex"], reason, at=at, invalidity_date=invalidity,
                            actor="init-demo")
        elif n % revoke_every == 7 and not hold_done:
            registry.revoke(entry["issuer"], entry["serial_hex"], "certificateHold", actor="init-demo")
            hold_done = True
    for entry in manifest:
        record = registry.get(entry["issuer"], entry["serial_hex"])
        assert record is not None
        entry["status"] = record.status
        entry["reason"] = record.reason
    (certs_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    registry.close()
