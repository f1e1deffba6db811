"""The demo root's key ceremony: its ARL signed once, then its key destroyed (demo and tests only).

A real root is kept offline: its key signs the subordinate CA certificates and, now and then, the ARL,
at a ceremony; the publication service never holds it. The demo does the same: ``init-demo`` generates
the root key in the token, signs the hierarchy and one ARL with it, then destroys the key, so that the
service's token (whose PIN the service holds) cannot sign anything under the root. The ARL is installed
by the path every CRL signed elsewhere takes (``annuaire crl publish``). Its validity is long
(``ARL_VALIDITY``); a demo kept longer is rebuilt (``rm -r var/demo``), as a real root's ARL is re-signed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pkcs11

from directory import der
from directory.config import Config
from directory.crl.publish import publish_crl
from directory.demo.issuance import CertificateAuthority, utcnow
from directory.hsm.signer import HsmSigner
from directory.publication import crl_dir
from directory.runtime import open_config_registry

log = logging.getLogger(__name__)
ARL_VALIDITY = 365 * 86400


def sign_crl(ca: CertificateAuthority, number: int, this_update: int, next_update: int) -> bytes:
    """An empty CRL of ``ca`` (its ARL: none of its CA certificates is revoked) signed with its key."""
    assert ca.certificate is not None
    signer = ca.signer
    extensions = der.tlv(0xA0, der.sequence(der.authority_key_identifier(ca.ski), der.crl_number(number)))
    tbs = der.sequence(b"\x02\x01\x01", signer.algorithm_identifier_der, ca.certificate.subject.public_bytes(),
                       der.time(this_update), der.time(next_update), extensions)
    return der.sequence(tbs, signer.algorithm_identifier_der, der.tlv(0x03, b"\x00" + signer.sign(tbs)))


def destroy_key(hsm: HsmSigner, label: str) -> int:
    """Destroy every object labelled ``label`` in the token (the key pair); the number destroyed."""
    with hsm.admin_session() as session:
        objects = list(session.get_objects({pkcs11.Attribute.LABEL: label}))
        for obj in objects:
            obj.destroy()
    log.info("key %r destroyed in the token after the ceremony (%d objects)", label, len(objects))
    return len(objects)


def offline_root(hsm: HsmSigner, root: CertificateAuthority, say: Callable[[str], None]) -> bytes:
    """The root's ARL signed once, then the root key destroyed: from here on the root is offline."""
    now = int(utcnow().timestamp())
    arl = sign_crl(root, 1, now, now + ARL_VALIDITY)
    try:
        destroy_key(hsm, root.name)
    except Exception as exc:  # a module that cannot destroy objects: the service is still never given the key
        say(f"warning: the root key could not be destroyed in the token ({type(exc).__name__}: {exc}); "
            "the configuration does not name it")
    return arl


def publish_arl(config: Config, root: str, arl: bytes) -> None:
    """The ARL installed the way every CRL signed elsewhere is (``annuaire crl publish``)."""
    registry = open_config_registry(config)
    try:
        publish_crl(config.issuer(root), registry, crl_dir(config), config.http.base_url, arl, "init-demo")
    finally:
        registry.close()
