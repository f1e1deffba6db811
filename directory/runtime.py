"""Turning a validated ``Config`` into live parts: the HSM signer, the registry, issuer signers."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from directory.certinfo import CertificateInfo
from directory.config import Config
from directory.hsm.settings import HsmSettings
from directory.registry import Registry, open_registry

if TYPE_CHECKING:  # the importer (and its archive readers) only when importing, the PKCS#11 stack only when
    # opened (`crl build` reads its first entries meanwhile, ``open_hsm``): not on `crl build`'s start-up
    from directory.hsm.capabilities import TokenReport
    from directory.hsm.signer import HsmSigner, KeySigner
    from directory.ingest.importer import Importer, KnownIssuer

log = logging.getLogger(__name__)


def hsm_settings(config: Config) -> HsmSettings:
    h = config.hsm
    return HsmSettings(module=h.module, token_label=h.token_label, pin=h.read_pin(),
                       max_concurrent=h.max_concurrent,
                       softhsm2_conf=str(h.softhsm2_conf) if h.softhsm2_conf else None, pin_reader=h.read_pin,
                       serialize=h.serialize, pin_source=h.pin_source, pin_rereadable=h.pin_env is None)


def open_hsm(config: Config, settings: HsmSettings | None = None) -> HsmSigner:
    """The signer (python-pkcs11 imported, the module initialised; no session yet: the first use logs in)."""
    from directory.hsm.signer import HsmSigner

    return HsmSigner(settings or hsm_settings(config))


def configured_keys(config: Config, hsm: HsmSigner) -> list[KeySigner]:
    """Every key the configuration signs with: issuer keys (CRLs, and OCSP when no delegated responder;
    none for an offline issuer) and delegated OCSP responder keys, each with the algorithm it will be used with."""
    return list(key_uses(config, hsm).values())


def key_uses(config: Config, hsm: HsmSigner) -> dict[str, KeySigner]:
    """The configured keys by the configuration keys that name them (``issuers[NAME].key_label``, ...): one
    signer per label, algorithm and certificate, so a label two certificates name is checked against both."""
    keys: dict[tuple[str, str, bytes], tuple[list[str], KeySigner]] = {}
    for issuer in config.issuers:
        pairs = [(f"issuers[{issuer.name}].key_label", issuer.key_label, issuer.certificate,
                  issuer.signature_algorithm)]
        ocsp = issuer.ocsp
        if ocsp is not None and ocsp.signer_key_label and ocsp.signer_certificate is not None:
            pairs.append((f"issuers[{issuer.name}].ocsp.signer_key_label", ocsp.signer_key_label,
                          ocsp.signer_certificate, None))
        for where, label, certificate, algorithm in pairs:
            if not label:  # an issuer without a key here (an offline root) has nothing to check
                continue
            signer = hsm.key(label, certificate, algorithm)
            spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            keys.setdefault((signer.label, signer.algorithm.name, spki), ([], signer))[0].append(where)
    return {", ".join(wheres): signer for wheres, signer in keys.values()}


def inspect_hsm(config: Config, hsm: HsmSigner) -> TokenReport:
    """What the module and token offer and which mechanism each configured key uses (``report.unusable``:
    keys that cannot sign as configured); ``HsmUnavailable`` when the token cannot be reached."""
    return hsm.inspect(configured_keys(config, hsm))


def open_config_registry(config: Config) -> Registry:
    """Open the registry and record the configured issuers in it (idempotent)."""
    registry = open_registry(config.registry_location())
    if config.ldap is None:
        registry.ldap_outbox_enabled = False
        if registry.state_get("layout"):  # if [ldap] is configured again later, its first pass is a full one
            registry.state_set({"layout": ""})
    for issuer in config.issuers:
        registry.ensure_issuer(issuer.name, issuer.certificate.subject.public_bytes(),
                               issuer.certificate.public_bytes(Encoding.DER))
    return registry


def known_issuers(config: Config) -> list[KnownIssuer]:
    from directory.ingest.importer import KnownIssuer

    return [KnownIssuer(i.name, i.certificate) for i in config.issuers]


def importer_for(config: Config, registry: Registry, actor: str, apply_older: bool = False) -> Importer:
    """An importer that also records where each new certificate goes in the directory (when [ldap] is set):
    the certificate is parsed once, at import, and the sync does not parse it again."""
    from directory.ingest.importer import Importer

    after_import = None
    if config.ldap is not None:
        from directory.ldap.projection import Layout, omitted_text, project_name, projection_row

        layout = Layout.from_config(config.ldap)

        def after_import(issuer: str, infos: list[CertificateInfo]) -> None:
            rows = []
            for info in infos:
                if info.subject is None:
                    continue
                projection = project_name(info.subject, info.profile, list(info.emails), layout)
                if projection is not None and projection.omitted:
                    log.warning("values left out of %s (the directory would refuse them): %s", projection.dn,
                                omitted_text(projection.omitted), extra={"issuer": issuer, "serial": info.serial_hex})
                rows.append((info.serial_hex, *projection_row(projection)))
            if rows:
                registry.ldap_project_serials(layout.digest, issuer, rows)

    return Importer(registry, known_issuers(config), actor=actor, after_import=after_import, apply_older=apply_older)
