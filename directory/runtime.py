"""Turning a validated ``Config`` into live parts: the HSM signer, the registry, issuer signers."""

from __future__ import annotations

from cryptography.hazmat.primitives.serialization import Encoding

from directory.config import Config
from directory.hsm.signer import HsmSettings, HsmSigner
from directory.ingest.importer import KnownIssuer
from directory.registry import Registry, open_registry


def hsm_settings(config: Config) -> HsmSettings:
    h = config.hsm
    return HsmSettings(module=h.module, token_label=h.token_label, pin=h.read_pin(),
                       max_concurrent=h.max_concurrent,
                       softhsm2_conf=str(h.softhsm2_conf) if h.softhsm2_conf else None)


def open_hsm(config: Config) -> HsmSigner:
    return HsmSigner(hsm_settings(config))


def open_config_registry(config: Config) -> Registry:
    """Open the registry and record the configured issuers in it (idempotent)."""
    registry = open_registry(config.registry_url)
    if config.ldap is None:
        registry.ldap_outbox_enabled = False
        if registry.state_get("layout"):  # if [ldap] is configured again later, its first pass is a full one
            registry.state_set({"layout": ""})
    for issuer in config.issuers:
        registry.ensure_issuer(issuer.name, issuer.certificate.subject.public_bytes(),
                               issuer.certificate.public_bytes(Encoding.DER))
    return registry


def known_issuers(config: Config) -> list[KnownIssuer]:
    return [KnownIssuer(i.name, i.certificate) for i in config.issuers]
