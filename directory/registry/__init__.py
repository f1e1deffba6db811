"""Certificate registry (SQLite by default); all SQL lives in ``store.py``."""

from directory.registry.store import (
    CertificateRecord,
    ChangeOutcome,
    ImportOutcome,
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
    "Registry",
    "RegistryError",
    "UnknownCertificate",
    "UnknownIssuer",
    "open_registry",
]
