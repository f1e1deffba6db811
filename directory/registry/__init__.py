"""Certificate registry (SQLite, or PostgreSQL shared by several nodes): all SQL, one module per role
(``store.Registry`` puts them on one core of connections and transactions).

The names below are loaded from ``store`` when first used, not when a module of the package is imported:
``snapshot`` (a CRL build's read) imports only the standard library and ``der``, so that `crl build` reads
its entries while the rest (the configuration, ``cryptography``) is still being imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from directory.registry import store

    return getattr(store, name)
