"""Distinguished names: RFC 4514 escaping, parsing, comparison keys, and the configurable DN templates.

A subject attribute value never becomes DN syntax: templates are parsed once into (type, placeholder)
pairs and each value is escaped on its own, so ``,+"\\<>;=#``, leading/trailing spaces, NUL or any
UTF-8 in a certificate subject produce one well-formed RDN value, never another RDN or another branch.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_SPECIAL = set(',+"\\<>;=')
_PLACEHOLDER = re.compile(r"^\{([A-Za-z][A-Za-z0-9-]*)\}$")
_TYPE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)+)$")

RDN = tuple[tuple[str, str], ...]


class DnError(ValueError):
    """Not a distinguished name (or not a usable template)."""


def escape_value(value: str) -> str:
    """RFC 4514 §2.4: escape the specials, a leading '#' or space, a trailing space, and NUL."""
    out = []
    last = len(value) - 1
    for i, ch in enumerate(value):
        if ch in _SPECIAL or (i == 0 and ch in "# ") or (i == last and ch == " "):
            out.append("\\" + ch)
        elif ch == "\x00":
            out.append("\\00")
        else:
            out.append(ch)
    return "".join(out)


def parse(dn: str) -> list[RDN]:
    """RDNs of ``dn`` with values unescaped (string values only; ``#hex`` values are kept as written)."""
    if not dn:
        return []
    if "\\" not in dn and '"' not in dn:  # the common case: nothing escaped
        try:
            return [tuple(_pair(ava) for ava in rdn.split("+")) for rdn in dn.split(",")]
        except DnError:
            raise DnError(f"not a DN: {dn!r}") from None
    rdns: list[RDN] = []
    avas: list[tuple[str, str]] = []
    attr: str | None = None
    raw = bytearray()
    i = 0
    data = dn
    while i <= len(data):
        ch = data[i] if i < len(data) else None
        if attr is None:
            j = data.find("=", i)
            if j < 0:
                raise DnError(f"not a DN: {dn!r}")
            attr = data[i:j].strip()
            if not _TYPE.match(attr):
                raise DnError(f"bad attribute type {attr!r} in {dn!r}")
            i = j + 1
            raw.clear()
            continue
        if ch == "\\":
            nxt = data[i + 1:i + 3]
            if len(nxt) == 2 and all(c in "0123456789abcdefABCDEF" for c in nxt):
                raw.append(int(nxt, 16))
                i += 3
            elif i + 1 < len(data):
                raw += data[i + 1].encode()
                i += 2
            else:
                raise DnError(f"dangling escape in {dn!r}")
            continue
        if ch is None or ch in ",+":
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DnError(f"escaped bytes are not UTF-8 in {dn!r}") from None
            avas.append((attr, value))
            attr = None
            if ch != "+":
                rdns.append(tuple(avas))
                avas = []
            i += 1
            if ch is None:
                break
            continue
        raw += ch.encode()
        i += 1
    return rdns


def _pair(ava: str) -> tuple[str, str]:
    attr, sep, value = ava.partition("=")
    attr = attr.strip()
    if not sep or not _TYPE.match(attr):
        raise DnError(ava)
    return attr, value


def fold(value: str) -> str:
    """caseIgnoreMatch-like comparison form: NFKC, case folded, insignificant spaces collapsed."""
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


def key(dn: str) -> str:
    """Comparison key: types lower-cased, values folded, multi-valued RDNs in a fixed order."""
    return ",".join("+".join(sorted(f"{t.lower()}={fold(v)}" for t, v in rdn)) for rdn in parse(dn))


def build(rdns: list[RDN]) -> str:
    return ",".join("+".join(f"{t}={escape_value(v)}" for t, v in rdn) for rdn in rdns)


# Object classes of the intermediate entries a template's upper RDNs name, by naming attribute: standard
# classes where one fits, else ``healthContainer`` (schema/health.schema), e.g. ``title=Médecin``.
CONTAINER_CLASSES = {"ou": "organizationalUnit", "o": "organization", "l": "locality", "st": "locality",
                     "c": "country", "title": "healthContainer", "healthprofession": "healthContainer",
                     "healthspecialty": "healthContainer", "healthstructureid": "healthContainer"}


@dataclass(frozen=True)
class DnTemplate:
    """``cn={CN}+healthProfessionalId={serialNumber}``: RDN types are literal, ``{NAME}`` is a subject
    attribute (its short name: CN, SN, GN, O, OU, L, C, ST, title, serialNumber, emailAddress, UID), ``mail``
    for the first e-mail address, ``healthProfessionalId`` / ``healthStructureId`` for the holder's national
    identifier wherever the subject carries it (serialNumber or a card's CN; a numeric OU).
    The first RDN (possibly multi-valued) names the entry; further RDNs, one attribute each, name
    intermediate entries between it and its branch, which the sync creates while an entry lies below them
    (``cn={CN}+sn={SN}+givenName={GN},title={title}``: a DIT shaped like the certificate subjects).
    """

    text: str
    rdns: tuple[tuple[tuple[str, str], ...], ...]  # (type, placeholder) pairs; the entry's RDN first

    @classmethod
    def parse(cls, text: str) -> DnTemplate:
        rdns = []
        for n, rdn in enumerate(text.split(",")):
            parts = []
            for ava in rdn.split("+"):
                attr, sep, value = ava.partition("=")
                attr = attr.strip()
                match = _PLACEHOLDER.match(value.strip())
                if not sep or not _TYPE.match(attr) or not match:
                    raise DnError(f"{text!r}: each RDN part must be type={{SUBJECT_ATTRIBUTE}}, e.g. cn={{CN}}")
                parts.append((attr, match.group(1)))
            if n and (len(parts) > 1 or parts[0][0].lower() not in CONTAINER_CLASSES):
                raise DnError(f"{text!r}: an RDN above the entry's names an intermediate entry: one attribute "
                              f"among {', '.join(sorted(CONTAINER_CLASSES))} (the branch and suffix are added)")
            rdns.append(tuple(parts))
        return cls(text, tuple(rdns))

    @property
    def placeholders(self) -> tuple[str, ...]:
        return tuple(p for rdn in self.rdns for _, p in rdn)

    def render(self, values: dict[str, str]) -> list[RDN] | None:
        """The RDNs for a subject (the entry's first), or None when an attribute it needs is missing or blank."""
        out = []
        for rdn in self.rdns:
            pairs = []
            for attr, placeholder in rdn:
                value = values.get(placeholder)
                if value is None or not value.strip():
                    return None
                pairs.append((attr, value))
            out.append(tuple(pairs))
        return out
