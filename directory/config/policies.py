"""``[[issuers.policies]]``: a CA's certification policies ("Politiques de certification"), shown on the
publication page: a link to where they are published, or a document served by this service at
``/pc/NAME`` (read at start; PDF, HTML or text), each with its title and, optionally, its policy OID.

```toml
[[issuers.policies]]
title = "Politique de certification AC Personnes"
file = "pc/pc-ac-personnes.pdf"     # served at /pc/pc-ac-personnes.pdf
oid = "1.2.250.1.71.1.2.5"           # optional: the policy OID its certificates carry
[[issuers.policies]]
title = "Déclaration des pratiques"
url = "https://pki.example.org/PC/dpc.pdf"
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from directory.config.reader import ConfigError, Section

DOCUMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DOCUMENT_TYPES = {".pdf": "application/pdf", ".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8",
                  ".txt": "text/plain; charset=utf-8"}
MAX_DOCUMENT = 32 * 1024 * 1024  # bytes: a policy document is read into memory to be served
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]{0,63})){1,40}$")  # 2.25.<UUID> arcs have 39 digits
_URL = re.compile(r"^https?://[\x21-\x7e]{1,2000}$")
MAX_POLICIES = 20


@dataclass(frozen=True)
class PolicyDocument:
    title: str
    url: str | None = None  # a link to where it is published
    file: Path | None = None  # or a document this service serves at /pc/NAME
    oid: str | None = None

    @property
    def name(self) -> str | None:
        """The file name it is served under (``/pc/NAME``)."""
        return self.file.name if self.file is not None else None


def policies_section(file: Path, prefix: str, raw: Any) -> tuple[PolicyDocument, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_POLICIES:
        raise ConfigError(file, prefix, f"must be a list of at most {MAX_POLICIES} tables (title, url or file, oid)")
    out = []
    for index, table in enumerate(raw):
        if not isinstance(table, dict):
            raise ConfigError(file, f"{prefix}[{index}]", "must be a table (title, url or file, oid)")
        s = Section(file, f"{prefix}[{index}]", table, {"title", "url", "file", "oid"})
        title = s.get("title", str, required=True).strip()
        if not title or len(title) > 200 or any(ord(c) < 32 for c in title):
            raise s.error("title", "must be 1 to 200 printable characters")
        url = s.get("url", str, None)
        path = s.path("file", None)
        if (url is None) == (path is None):
            raise s.error("url", "exactly one of url (a link) or file (a document served at /pc/NAME)")
        if url is not None and not _URL.match(url):
            raise s.error("url", "must be an http:// or https:// URL (printable ASCII, no spaces)")
        if path is not None:
            _check_document(s, path)
        oid = s.get("oid", str, None)
        if oid is not None and not _OID.match(oid):
            raise s.error("oid", f"{oid!r} is not a dotted object identifier")
        out.append(PolicyDocument(title, url, path, oid))
    return tuple(out)


def _check_document(s: Section, path: Path) -> None:
    if not DOCUMENT_NAME.match(path.name) or path.suffix.lower() not in DOCUMENT_TYPES:
        raise s.error("file", f"{path.name!r}: a policy document is named with letters, digits, '.', '-', '_' and "
                              f"is one of {', '.join(sorted(DOCUMENT_TYPES))}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise s.error("file", f"cannot read {path}: {exc.strerror}") from None
    if not path.is_file() or size > MAX_DOCUMENT:
        raise s.error("file", f"{path} must be a regular file of at most {MAX_DOCUMENT // 1048576} MiB")


def check_unique(file: Path, documents: list[tuple[str, PolicyDocument]]) -> None:
    """Two issuers may list the same document, not two documents under one name."""
    seen: dict[str, Path] = {}
    for issuer, doc in documents:
        if doc.file is None or doc.name is None:
            continue
        other = seen.setdefault(doc.name, doc.file)
        if other.resolve() != doc.file.resolve():
            raise ConfigError(file, f"issuers[{issuer}].policies", f"two documents are named {doc.name!r} "
                                                                   f"({other} and {doc.file}): /pc/{doc.name} is one")
