"""Certificate registry (SQLite, or PostgreSQL shared by several nodes): all SQL, one module per role
(``store.Registry`` puts them on one core of connections and transactions)."""

from directory.registry.store import (
    CertificateRecord,
    ChangeOutcome,
    ImportOutcome,
    NotRegistered,
    Registry,
    RegistryError,
    UnknownCertificate,
    UnknownIssuer,
    open_registry,
)

__all__ = [
    "CertificateRecord",
    "ChangeOutcome",
    "ImportOutcome",
    "NotRegistered",
    "Registry",
    "RegistryError",
    "UnknownCertificate",
    "UnknownIssuer",
    "open_registry",
]
