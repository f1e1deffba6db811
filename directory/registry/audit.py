"""The audit trail: a hash chain appended in every write's transaction, checked and exported here.

Each record carries the hash of the previous one and a hash over its own fields (``audit_hash``), so an
edited record no longer matches its hash, and a deleted one breaks the link of the record after it.
Removing the newest records leaves a shorter chain that is still consistent: that is what ``--head``
(a head hash noted earlier, e.g. from a previous export) catches (``annuaire audit verify|export``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from directory.registry.backends import Conn
from directory.registry.core import RegistryCore

GENESIS_HASH = "0" * 64


def audit_hash(prev: str, at: int, actor: str, action: str, issuer: str | None, serial_hex: str | None,
               before: str | None, after: str | None) -> str:
    """SHA-256 over the previous hash and this record's fields, canonically encoded."""
    payload = json.dumps([prev, at, actor, action, issuer, serial_hex, before, after], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


class AuditTrail(RegistryCore):
    """The chain's records: appended inside each write's transaction, read in chain order."""

    def _audit(self, tx: Conn, actor: str, action: str, issuer: str | None,
               serial_hex: str | None, before: str | None, after: str | None) -> None:
        row = tx.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        prev = row[0] if row else GENESIS_HASH
        at = int(self.clock())
        digest = audit_hash(prev, at, actor, action, issuer, serial_hex, before, after)
        tx.execute("INSERT INTO audit (at, actor, action, issuer, serial_hex, before, after, prev_hash, hash) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (at, actor, action, issuer, serial_hex, before, after,
                                                          prev, digest))

    def audit_records(self) -> list[dict[str, Any]]:
        return list(self.iter_audit())

    def iter_audit(self, after_id: int = 0, batch: int = 5000) -> Iterator[dict[str, Any]]:
        """Audit records in chain order, read in batches (a registry of millions is not loaded at once)."""
        names = ["id", "at", "actor", "action", "issuer", "serial_hex", "before", "after", "prev_hash", "hash"]
        while True:
            rows = self._conn().execute(f"SELECT {', '.join(names)} FROM audit WHERE id > ? ORDER BY id LIMIT ?",
                                        (after_id, batch)).fetchall()
            for row in rows:
                yield dict(zip(names, row, strict=True))
            if len(rows) < batch:
                return
            after_id = rows[-1][0]

    def audit_append(self, actor: str, action: str, issuer: str | None = None, serial_hex: str | None = None,
                     before: str | None = None, after: str | None = None) -> None:
        """Append one record on its own (an admin API call, say); other writes audit inside their transaction."""
        with self._write() as tx:
            self._audit(tx, actor, action, issuer, serial_hex, before, after)


@dataclass
class AuditReport:
    records: int = 0
    head: str = GENESIS_HASH
    head_id: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "head_id": self.head_id, "head": self.head,
                "problems": self.problems}


def verify_chain(records: Iterable[dict[str, Any]], expected_head: str | None = None) -> AuditReport:
    """Walk the chain once; every broken record is named with what is wrong with it."""
    report = AuditReport()
    prev_hash, prev_id = GENESIS_HASH, 0
    seen_expected = expected_head is None
    for r in records:
        report.records += 1
        recomputed = audit_hash(r["prev_hash"], r["at"], r["actor"], r["action"], r["issuer"], r["serial_hex"],
                                r["before"], r["after"])
        if recomputed != r["hash"]:
            report.problems.append({"id": r["id"], "problem": "edited",
                                    "detail": "the record's fields no longer match its hash"})
        if r["prev_hash"] != prev_hash:
            what = ("the previous record was edited" if r["id"] == prev_id + 1
                    else f"records {prev_id + 1}..{r['id'] - 1} are missing")
            report.problems.append({"id": r["id"], "problem": "broken link",
                                    "detail": f"prev_hash does not match record {prev_id}'s hash: {what}"})
        elif r["id"] != prev_id + 1:
            report.problems.append({"id": r["id"], "problem": "gap",
                                    "detail": f"records {prev_id + 1}..{r['id'] - 1} are missing"})
        if r["hash"] == expected_head:
            seen_expected = True
        prev_hash, prev_id = r["hash"], r["id"]
    report.head, report.head_id = prev_hash, prev_id
    if not seen_expected:
        report.problems.append({"id": None, "problem": "head missing",
                                "detail": f"no record has the expected head hash {expected_head}: "
                                          "records were removed from the end, or this is another registry"})
    return report


def export_lines(records: Iterable[dict[str, Any]], out: TextIO) -> int:
    """One JSON object per line, in chain order; returns the number written."""
    n = 0
    for r in records:
        out.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
        n += 1
    return n


def read_lines(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Records back from an export (``annuaire audit verify --file``)."""
    for line in lines:
        if line.strip():
            yield json.loads(line)
