"""The publication checker's reads of the registry, and its small state (``check_state``, migration 9).

What the checker compares the public channels with: each certificate's status, revocation details,
expiry, when it last changed (``updated_at``: import or status change), whether the directory places it,
and whether a client asked for it with a SHA-256 CertID (a persisted SHA-256 answer exists).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from directory.registry.store import Registry

REPORT_PREFIX = "report:"


@dataclass(frozen=True)
class CertificateFacts:
    id: int
    issuer: str
    serial_hex: str
    status: str  # good | revoked | on-hold
    revocation_time: int | None
    reason: str | None
    invalidity_date: int | None
    not_after: int | None
    changed_at: int  # last import or status change (seconds)
    has_der: bool
    placed: bool | None  # directory entry for this certificate under the layout; None: not projected yet
    sha256_answer: bool  # a SHA-256 CertID answer is persisted: clients ask for this one with SHA-256


_FACTS = (
    "SELECT c.id, i.name, c.serial_hex, c.status, c.revocation_time, c.reason, c.invalidity_date, c.not_after, "
    "c.updated_at, c.der IS NOT NULL, "
    "(SELECT p.dn_key IS NOT NULL FROM ldap_projection p WHERE p.certificate_id = c.id AND p.layout = ?), "
    "EXISTS (SELECT 1 FROM ocsp_responses r WHERE r.issuer_id = c.issuer_id AND r.serial_hex = c.serial_hex "
    "AND r.hash_name = 'sha256') "
    "FROM certificates c JOIN issuers i ON i.id = c.issuer_id WHERE c.id IN "
)


class CheckReads:
    """Read-only queries (plus the checker's own state rows) on an open ``Registry``."""

    def __init__(self, registry: Registry, layout: str | None) -> None:
        self.registry = registry
        self.layout = layout or ""

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self.registry._conn().execute(sql, params).fetchall()

    def facts(self, ids: Sequence[int]) -> dict[int, CertificateFacts]:
        out: dict[int, CertificateFacts] = {}
        wanted = list(ids)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            for r in self._rows(_FACTS + f"({','.join('?' * len(chunk))})", [self.layout, *chunk]):
                out[r[0]] = CertificateFacts(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], int(r[8]), bool(r[9]),
                                             None if r[10] is None else bool(r[10]), bool(r[11]))
        return out

    def next_ids(self, after_id: int, limit: int) -> list[int]:
        """The rolling sample: the next ``limit`` certificate ids after ``after_id`` (by primary key)."""
        return [r[0] for r in self._rows("SELECT id FROM certificates WHERE id > ? ORDER BY id LIMIT ?",
                                         (after_id, limit))]

    def all_ids(self, batch: int = 500) -> Iterator[list[int]]:
        after = 0
        while ids := self.next_ids(after, batch):
            yield ids
            after = ids[-1]

    def certificate_count(self) -> int:
        return int(self._rows("SELECT COUNT(*) FROM certificates")[0][0])

    def first_change_since(self, at: float) -> int:
        """The sequence number just before the first status change at or after ``at`` (seconds)."""
        row = self._rows("SELECT MIN(seq) FROM status_changes WHERE at >= ?", (int(at),))[0]
        if row[0] is not None:
            return int(row[0]) - 1
        return int(self._rows("SELECT COALESCE(MAX(seq), 0) FROM status_changes")[0][0])

    def changes_after(self, seq: int, limit: int = 10000) -> list[tuple[int, int, float]]:
        """(seq, certificate id, time in seconds) of the status changes after ``seq``, oldest first."""
        return [(r[0], r[1], r[2] / 1000) for r in self._rows(
            "SELECT seq, certificate_id, COALESCE(at_ms, at * 1000) FROM status_changes WHERE seq > ? "
            "ORDER BY seq LIMIT ?", (seq, limit))]

    def directory_synchronised(self) -> bool:
        """True once the LDAP sync finished a full pass (before it, the directory is still being filled)."""
        return bool(self.registry.state_get("last_full"))

    # -- the checker's state -------------------------------------------------------------------------
    def state_get(self, name: str) -> str | None:
        rows = self._rows("SELECT value FROM check_state WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def state_set(self, values: dict[str, str]) -> None:
        with self.registry._write() as tx:
            for name, value in values.items():
                tx.execute("DELETE FROM check_state WHERE name = ?", (name,))
                tx.execute("INSERT INTO check_state (name, value) VALUES (?, ?)", (name, value))


def recent_reports(registry: Registry, max_age: float, now: float | None = None) -> list[dict[str, Any]]:
    """The checkers' last reports (one per node) written less than ``max_age`` seconds ago."""
    now = time.time() if now is None else now
    out = []
    rows = registry._conn().execute("SELECT name, value FROM check_state WHERE name LIKE ?",
                                    (REPORT_PREFIX + "%",)).fetchall()
    for _, value in rows:
        try:
            report = json.loads(value)
        except ValueError:
            continue
        if isinstance(report, dict) and now - float(report.get("at", 0)) <= max_age:
            out.append(report)
    return out
