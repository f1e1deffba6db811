"""Reading the TOML: errors that name file, key and problem; typed access to one table; paths, secrets
(``credential:NAME``), durations, sizes, listen addresses."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509

CREDENTIAL = "credential:"


class ConfigError(Exception):
    """A configuration problem: ``file: key: what is wrong``."""

    def __init__(self, file: Path | str, key: str, problem: str) -> None:
        super().__init__(f"{file}: {key}: {problem}")
        self.file = str(file)
        self.key = key
        self.problem = problem


class Section:
    """Typed access to one TOML table that remembers its dotted key for error messages."""

    def __init__(self, file: Path, prefix: str, table: Mapping[str, Any], allowed: set[str]) -> None:
        self.file, self.prefix, self.table = file, prefix, table
        for key in table:
            if key not in allowed:
                raise ConfigError(file, self.key(key), f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), problem)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ..., required: bool = False) -> Any:
        if name not in self.table:
            if required or default is ...:
                raise self.error(name, "missing")
            return default
        value = self.table[name]
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise self.error(name, f"must be {expected}, got {type(value).__name__} {value!r}")
        return value

    def path(self, name: str, default: Any = ...) -> Path | None:
        value = self.get(name, str, default)
        if value is None:
            return None
        if value.startswith(CREDENTIAL):
            return self._credential(name, value[len(CREDENTIAL):])
        p = Path(value)
        return p if p.is_absolute() else (self.file.parent / p)

    def _credential(self, name: str, credential: str) -> Path:
        """``credential:NAME``: a file systemd copied for this service only (``LoadCredential=NAME:PATH``),
        so the secret itself can stay readable by root alone."""
        if not credential or credential in (".", "..") or "/" in credential or "\0" in credential \
                or len(credential) > 255:
            raise self.error(name, f"{CREDENTIAL}{credential!r}: a credential name is one file name")
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise self.error(name, f"{CREDENTIAL}{credential} needs $CREDENTIALS_DIRECTORY, set by systemd with "
                                   f"LoadCredential={credential}:FILE (outside systemd: the folder holding the file)")
        return Path(directory) / credential

    def table_of(self, name: str) -> Mapping[str, Any]:
        value = self.table.get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, "must be a table")
        return value


def listen_address(s: Section, default: str) -> tuple[str, int]:
    listen = s.get("listen", str, default)
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise s.error("listen", f"must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port_text)


def readable_file(s: Section, name: str) -> Path | None:
    path = s.path(name, None)
    if path is not None:
        try:
            if not path.read_bytes().strip():
                raise s.error(name, f"{path} is empty")
        except OSError as exc:
            raise s.error(name, f"cannot read {path}: {exc.strerror}") from None
    return path


def seconds(s: Section, name: str, default: float) -> float:
    value = s.get(name, (int, float), default)
    if isinstance(value, bool) or not 1 <= value <= 3600:
        raise s.error(name, "must be between 1 and 3600 seconds")
    return float(value)


def load_certificate(s: Section, key: str, path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise s.error(key, f"cannot read {path}: {exc.strerror}") from None
    try:
        return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise s.error(key, f"{path} is not an X.509 certificate: {exc}") from None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> int:
    """Seconds from an integer or a string like ``90s``, ``15m``, ``6h``, ``7d``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 15m, 6h, 7d")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return value
    if isinstance(value, str) and len(value) > 1 and value[-1] in _UNITS and value[:-1].isdigit():
        return int(value[:-1]) * _UNITS[value[-1]]
    raise ValueError(f"{value!r} is not a duration (seconds, or 90s, 15m, 6h, 7d)")


_SIZE_UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like ``512KiB``, ``16MiB``, ``1GiB``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value[-3:] in _SIZE_UNITS and value[:-3].isdigit():
        return int(value[:-3]) * _SIZE_UNITS[value[-3:]]
    raise ValueError(f"{value!r} is not a size (bytes, or 512KiB, 16MiB, 1GiB)")
