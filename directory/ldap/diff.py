"""Compare what an entry must hold with what the directory holds, value by value; plan the fewest writes.

An unchanged entry produces no write at all. A certificate that must go is removed as that one value
(a modify deleting exactly those bytes), never by rewriting the attribute, so the holder's other
certificates are untouched even if another writer is at work. That removal is kept apart from the entry's
other changes (``Plan.removals``): the sync writes it on its own, first, so that no other value of the
entry (one the directory refuses, say) can hold a revoked certificate in place; an entry that must go
loses its certificate values the same way before it is deleted. Text values compare the way the directory
matches them (case and insignificant spaces ignored); certificates and CRLs compare as bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from directory.ldap import ber, dn
from directory.ldap.client import Entry
from directory.ldap.projection import BINARY, CERTIFICATE_ATTRIBUTE, DesiredEntry, base_name


@dataclass
class Drift:
    """What differed, by kind (a verify reports it; a sync repairs it)."""

    entries_missing: int = 0
    entries_extra: int = 0
    certificates_missing: int = 0
    certificates_extra: int = 0
    attributes_differing: int = 0

    def total(self) -> int:
        return (self.entries_missing + self.entries_extra + self.certificates_missing + self.certificates_extra
                + self.attributes_differing)

    def add(self, other: Drift) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class Plan:
    """Writes for one entry. Certificates to add are ids until their bytes are fetched."""

    dn: str
    kind: str  # "add", "modify", "delete"
    changes: list[tuple[int, str, tuple[bytes, ...]]] = field(default_factory=list)
    add_certificates: list[int] = field(default_factory=list)
    attributes: dict[str, list[bytes]] = field(default_factory=dict)  # for "add"
    removals: tuple[bytes, ...] = ()  # certificate values to delete, written on their own before anything else
    drift: Drift = field(default_factory=Drift)

    def has_other_writes(self) -> bool:
        """Whether anything is left to write once ``removals`` are done."""
        return self.kind != "modify" or bool(self.changes or self.add_certificates)


def digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _unchanged(desired: DesiredEntry, actual: Entry) -> bool:
    """Fast path of a steady-state reconciliation: the entry holds exactly the bytes we would write."""
    want = desired.encoded()
    certificates: list[bytes] = []
    seen = 0
    for name, values in actual.attributes.items():
        key = base_name(name)
        if key == "usercertificate":
            certificates = values
            continue
        expected = want.get(key)
        if expected is None or len(values) != len(expected) or (values != expected and set(values) != set(expected)):
            return False
        seen += 1
    if seen != len(want) or len(certificates) != len(desired.certificates):
        return False
    return all(digest(v) in desired.certificates for v in certificates)


def add_attributes(desired: DesiredEntry) -> dict[str, list[bytes]]:
    """What an add of ``desired`` writes besides its certificates (a fresh dict; ``ldap export`` writes the
    same as LDIF): every non-empty text attribute, encoded, then the binary ones."""
    encode = str.encode
    attrs = {name: list(map(encode, values)) for name, values in desired.attributes.items() if values}
    for name, values in desired.binary.items():
        attrs[name] = list(values)
    return attrs


def plan(desired: DesiredEntry | None, actual: Entry | None) -> Plan | None:
    """The writes that make ``actual`` into ``desired`` (None: nothing to do)."""
    if desired is None:
        if actual is None:
            return None
        certificates = next((v for n, v in actual.attributes.items() if base_name(n) == "usercertificate"), [])
        return Plan(actual.dn, "delete", removals=tuple(certificates), drift=Drift(entries_extra=1))
    if actual is None:
        return Plan(desired.dn, "add", add_certificates=list(desired.certificates.values()),
                    attributes=add_attributes(desired),
                    drift=Drift(entries_missing=1, certificates_missing=len(desired.certificates)))
    if _unchanged(desired, actual):
        return None
    out = Plan(actual.dn, "modify")
    present = {base_name(name): (name, values) for name, values in actual.attributes.items()}
    wanted_text = {base_name(name): (name, values) for name, values in desired.attributes.items() if values}
    wanted_binary = {base_name(name): (name, values) for name, values in desired.binary.items()}
    # certificates: value by value
    have = {digest(v): v for v in present.pop("usercertificate", ("", []))[1]}
    missing = [cid for sha, cid in desired.certificates.items() if sha not in have]
    extra = [v for sha, v in have.items() if sha not in desired.certificates]
    out.removals = tuple(extra)
    out.add_certificates = missing
    out.drift.certificates_missing, out.drift.certificates_extra = len(missing), len(extra)
    for key in sorted(set(present) | set(wanted_text) | set(wanted_binary)):
        if key in wanted_binary or (key in BINARY and key in present):
            name, want = wanted_binary[key] if key in wanted_binary else (present[key][0], [])
            got = present.get(key, (name, []))[1]
            if {digest(v) for v in want} != {digest(v) for v in got}:
                out.changes.append((ber.MOD_REPLACE, name, tuple(want)) if want else (ber.MOD_DELETE, name, ()))
                out.drift.attributes_differing += 1
            continue
        name, values = wanted_text.get(key, (present.get(key, (key, []))[0], []))
        got_raw = present.get(key, (name, []))[1]
        if len(values) == len(got_raw) and {v.encode() for v in values} == set(got_raw):
            continue  # byte-identical (what we wrote last time): no need to compare the directory's way
        want_text = {dn.fold(v): v.encode() for v in values}
        got_text = {dn.fold(v.decode("utf-8", "replace")): v for v in got_raw}
        if set(want_text) == set(got_text):
            continue
        out.drift.attributes_differing += 1
        if not want_text:
            out.changes.append((ber.MOD_DELETE, present[key][0], ()))
            continue
        gone = tuple(v for k, v in got_text.items() if k not in want_text)
        new = tuple(v for k, v in want_text.items() if k not in got_text)
        if key == "objectclass":  # one replace: classes and their attributes change in the same modify
            out.changes.append((ber.MOD_REPLACE, name, tuple(want_text.values())))
            continue
        if gone:
            out.changes.append((ber.MOD_DELETE, present[key][0], gone))
        if new:
            out.changes.append((ber.MOD_ADD, name, new))
    if not out.changes and not out.add_certificates and not out.removals:
        return None
    return out


def removal(p: Plan) -> tuple[int, str, tuple[bytes, ...]]:
    """The modify change that deletes ``p``'s certificate values (and nothing else)."""
    return ber.MOD_DELETE, CERTIFICATE_ATTRIBUTE, p.removals
