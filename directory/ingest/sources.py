"""Reading certificates from what operators hand us: PEM (bundles too), DER, folders, ``openssl ca`` databases.

Each certificate found becomes a ``SourceItem`` naming where it came from; a part that cannot be read
becomes an item carrying the reason, so the importer can list it and go on with the rest.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from directory import serials
from directory.revocation import RevocationRefused, parse_reason

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
_CERT_LABELS = {b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"}
_SUFFIXES = {".pem", ".crt", ".cer", ".der", ".cert"}


@dataclass(frozen=True)
class IndexRevocation:
    """A revocation read from an ``openssl ca`` index line."""

    reason: str
    at: int
    invalidity_date: int | None


@dataclass(frozen=True)
class SourceItem:
    origin: str
    der: bytes | None = None
    error: str | None = None
    revocation: IndexRevocation | None = None
    indexed: bool = False  # from an index line: it states the certificate's status (revocation None: valid)


def expand(paths: list[Path]) -> list[Path]:
    """Files to read: files as given, folders walked recursively (certificate-like suffixes and index.txt)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and (child.suffix.lower() in _SUFFIXES or is_index(child)):
                    files.append(child)
        else:
            files.append(path)
    return files


def is_index(path: Path) -> bool:
    """An ``openssl ca`` database is recognised by its conventional name."""
    return path.name == "index.txt"


def read_file(path: Path, certs_dir: Path | None = None) -> Iterator[SourceItem]:
    """Items of one file: an index database, a PEM file (one item per block) or a DER certificate."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        yield SourceItem(str(path), error=f"cannot read: {exc.strerror}")
        return
    if is_index(path):
        yield from read_index(path, data, certs_dir)
        return
    if b"-----BEGIN" in data:
        yield from pem_items(str(path), data)
        return
    if not data:
        yield SourceItem(str(path), error="empty file")
        return
    if data[:1] != b"\x30":
        yield SourceItem(str(path), error="neither PEM nor DER (does not start with a SEQUENCE)")
        return
    yield SourceItem(str(path), der=data)


def pem_items(origin: str, data: bytes) -> Iterator[SourceItem]:
    """One item per PEM block of ``data`` (a certificate's DER, or why the block is not one)."""
    found = False
    for n, match in enumerate(_PEM_BLOCK.finditer(data), start=1):
        label, body = match.group(1), match.group(2)
        where = f"{origin}#{n}"
        if label not in _CERT_LABELS:
            yield SourceItem(where, error=f"PEM block {label.decode()!r} is not a certificate")
            found = True
            continue
        found = True
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            yield SourceItem(where, error="PEM block with invalid base64")
            continue
        yield SourceItem(where, der=der)
    if not found:
        yield SourceItem(origin, error="PEM header without a complete certificate block")


def _index_time(text: str) -> int:
    fmt = "%y%m%d%H%M%SZ" if len(text) == 13 else "%Y%m%d%H%M%SZ"
    return int(datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp())


def _index_revocation(field: str) -> IndexRevocation:
    parts = field.split(",")
    at = _index_time(parts[0])
    reason_text = parts[1] if len(parts) > 1 else "unspecified"
    invalidity = None
    if reason_text in ("keyTime", "CAkeyTime"):  # openssl ca -crl_compromise / -crl_CA_compromise
        reason = "keyCompromise" if reason_text == "keyTime" else "cACompromise"
        if len(parts) > 2:
            invalidity = _index_time(parts[2])
    elif reason_text == "holdInstruction":  # openssl ca -crl_hold (the instruction OID follows)
        reason = "certificateHold"
    elif reason_text == "removeFromCRL":
        raise RevocationRefused("removeFromCRL is not a revocation reason")
    else:
        reason = parse_reason(reason_text)
    return IndexRevocation(reason, at, invalidity)


def read_index(path: Path, data: bytes, certs_dir: Path | None) -> Iterator[SourceItem]:
    """``openssl ca`` index.txt: status, expiry, revocation[,reason], serial, file, subject (tab-separated)."""
    search = [certs_dir] if certs_dir else [path.parent / "newcerts", path.parent / "certs", path.parent]
    for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        origin = f"{path}:{lineno}"
        fields = line.split("\t")
        if len(fields) < 6 or fields[0] not in ("V", "R", "E"):
            yield SourceItem(origin, error="not an openssl ca index line (status, expiry, revocation, serial, ...)")
            continue
        status, serial = fields[0], fields[3]
        try:
            serials.parse(serial)  # the one serial rule (hex, as openssl writes it here)
        except serials.SerialError as exc:
            yield SourceItem(origin, error=str(exc))
            continue
        revocation = None
        if status == "R":
            try:
                revocation = _index_revocation(fields[2])
            except (ValueError, RevocationRefused) as exc:
                yield SourceItem(origin, error=f"bad revocation field {fields[2]!r}: {exc}")
                continue
        cert_file = _find_cert_file(search, serial, fields[4])
        if cert_file is None:
            yield SourceItem(origin, error=f"certificate file for serial {serial} not found in "
                                           f"{', '.join(str(s) for s in search)}")
            continue
        items = list(read_file(cert_file))
        if len(items) != 1 or items[0].der is None:
            yield SourceItem(origin, error=f"{cert_file}: {items[0].error if items else 'no certificate'}")
            continue
        yield SourceItem(f"{origin} ({cert_file.name})", der=items[0].der, revocation=revocation, indexed=True)


def _find_cert_file(search: list[Path], serial: str, filename: str) -> Path | None:
    names = [f"{serial.upper()}.pem", f"{serial.lower()}.pem"]
    if filename and filename != "unknown":
        names.insert(0, filename)
    for folder in search:
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None
