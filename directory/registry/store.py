"""The certificate registry: the one place that holds SQL, one module per role on one core.

Every operation is one transaction (writers are serialised: they queue instead of failing half-way)
and appends its audit record, hash-chained to the previous one, inside that same transaction.
SQLite runs in WAL mode with ``synchronous=FULL`` and foreign keys on: a committed revocation survives
a crash or a power cut. PostgreSQL (``backends.py``) gives the same guarantees to several nodes.

The roles (each a class over ``core.RegistryCore``): ``certificates`` (issuers, import, reads),
``revocations`` (status writes), ``crls`` (numbers, records, build snapshots), ``changes`` (the status
change log), ``ocsp_answers`` (persisted pre-signed answers), ``ldap_outbox`` and ``ldap_projection``
(what the directory sync takes and reads), ``audit`` (the hash chain and its verification), ``node_state``
(per-node cursors of the visibility metric).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from directory.registry.backends import RegistryError
from directory.registry.certificates import CertificateRecord, ImportOutcome
from directory.registry.changes import StatusChanges
from directory.registry.core import NotRegistered, UnknownCertificate, UnknownIssuer
from directory.registry.crls import CrlRecord, Crls
from directory.registry.ldap_projection import LdapProjection
from directory.registry.node_state import NodeState
from directory.registry.ocsp_answers import OcspAnswers
from directory.registry.revocations import ChangeOutcome, Revocations
from directory.revocation import RevocationRefused


class Registry(Revocations, Crls, StatusChanges, OcspAnswers, LdapProjection, NodeState):
    """Certificates and their status per issuer, plus the audit trail."""


def open_registry(url: str, clock: Callable[[], float] = time.time) -> Registry:
    """Open (and migrate) the registry named by ``sqlite:///PATH`` or ``postgresql://...``."""
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise RegistryError("unsupported registry URL scheme (expected sqlite:///PATH or postgresql://...)")
    return Registry(url, clock)


__all__ = [
    "CertificateRecord",
    "ChangeOutcome",
    "CrlRecord",
    "ImportOutcome",
    "NotRegistered",
    "Registry",
    "RegistryError",
    "RevocationRefused",
    "UnknownCertificate",
    "UnknownIssuer",
    "open_registry",
]
