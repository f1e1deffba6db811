"""CRL publication wired into the service: publishers per issuer, schedules, revocation triggers."""

from __future__ import annotations

from directory.config import Config
from directory.crl.builder import CrlPublisher, PublishedCrl
from directory.hsm.signer import HsmSigner
from directory.registry import Registry


def crl_dir(config: Config):  # type: ignore[no-untyped-def]
    return config.data_dir / "crl"


def publishers_for(config: Config, hsm: HsmSigner, registry: Registry, clock=None,  # type: ignore[no-untyped-def]
                   on_published=None) -> dict[str, CrlPublisher]:
    import time

    out = {}
    for issuer in config.issuers:
        signer = hsm.key(issuer.key_label, issuer.certificate, issuer.signature_algorithm)
        out[issuer.name] = CrlPublisher(issuer, signer, registry, crl_dir(config), config.http.base_url,
                                        clock or time.time, on_published)
    return out


__all__ = ["PublishedCrl", "crl_dir", "publishers_for"]
