"""What this installation is: our version and those of the libraries an operator asks about first.

Read from the installed distributions' metadata (a wheel, or the checkout's editable install), so
``annuaire --version``, the ``annuaire_build_info`` metric and a bug report all say the same thing.
"""

from __future__ import annotations

import platform
from importlib import metadata

DISTRIBUTION = "annuaire"
# the libraries whose version matters when something breaks: crypto and X.509, HTTP, PKCS#11, LDAP, SQL
LIBRARIES = ("cryptography", "aiohttp", "python-pkcs11", "ldap3", "pyasn1", "psycopg")


def version() -> str:
    """Our version; ``unknown`` when run from a tree that was never installed (``python -m`` on a copy)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def library_versions() -> dict[str, str]:
    """Each of ``LIBRARIES`` that is installed (psycopg only with the ``postgresql`` extra)."""
    found: dict[str, str] = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def openssl_version() -> str:
    """The OpenSSL ``cryptography`` is linked with (its wheels bundle their own): what signs and verifies."""
    try:
        from cryptography.hazmat.backends.openssl import backend
    except ImportError:
        return "unknown"
    return str(backend.openssl_version_text())


def build_info() -> dict[str, str]:
    """Version, Python and the key libraries: the labels of ``annuaire_build_info``."""
    return {"version": version(), "python": platform.python_version(), "openssl": openssl_version(),
            **{name.replace("-", "_"): v for name, v in library_versions().items()}}


def version_text() -> str:
    """``annuaire --version``: our version on the first line, then what it runs on."""
    info = build_info()
    libraries = ", ".join(f"{name} {v}" for name, v in library_versions().items())
    return f"{DISTRIBUTION} {info['version']}\nPython {info['python']}, {info['openssl']}\n{libraries}"
