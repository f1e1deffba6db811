"""LDAP outbox rows the directory refused: kept as dead letters, with the reason, retried with backoff.

A refusal is per entry (slapd refuses a whole add or modify); outbox rows are per certificate (or per
issuer, for a CA entry). A refused entry keeps the rows of this pass that map to it (and its earlier dead
letters), each marked with the refusal, its attempt count and the time of its next attempt; an entry
refused with no such row (a full pass repairing drift) gets one, so that a refusal is never only in a log.
The sync does not take a dead letter again before its time; a full pass retries everything anyway.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

RETRY_FIRST, RETRY_CAP = 5, 900  # seconds: 5, 10, 20, ... up to 15 minutes between attempts

Conn = Any


@dataclass(frozen=True)
class LdapRefusal:
    """One entry the directory refused: by its DN key (end entities) or its issuer (CA entries)."""

    reason: str
    dn_key: str | None = None
    issuer: str | None = None


def retry_delay(attempts: int) -> int:
    """Seconds until the next attempt after ``attempts`` refusals."""
    return min(RETRY_CAP, RETRY_FIRST * 2 ** min(max(attempts - 1, 0), 16))


def settle(tx: Conn, layout: str, now: int, ids: set[int], up_to: int | None, refusals: Sequence[LdapRefusal],
           issuer_id: Callable[[str], int]) -> list[tuple[int | None, float]]:
    """Delete the rows a pass wrote (``ids``, or all up to ``up_to``) but those of refused entries, which are
    marked instead. Returns the status changes (sequence number, time in seconds) of the rows deleted."""

    def settled(row_id: int) -> bool:
        return row_id in ids or (up_to is not None and row_id <= up_to)

    kept: set[int] = set()
    for refusal in refusals:
        kept |= _mark(tx, layout, now, refusal, settled, issuer_id)
    if up_to is not None:
        rows = tx.execute("SELECT id, enqueued_ms, change_seq FROM ldap_outbox WHERE id <= ?", (up_to,)).fetchall()
        bounds = [0, *sorted(k for k in kept if k <= up_to), up_to + 1]
        for low, high in itertools.pairwise(bounds):  # the ranges between the rows kept
            tx.execute("DELETE FROM ldap_outbox WHERE id > ? AND id < ?", (low, high))
    else:
        wanted = sorted(ids - kept)
        rows = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            rows += tx.execute(f"SELECT id, enqueued_ms, change_seq FROM ldap_outbox WHERE id IN "
                               f"({','.join('?' * len(chunk))})", chunk).fetchall()
        tx.executemany("DELETE FROM ldap_outbox WHERE id = ?", [(r[0],) for r in rows])
    return [(seq, ms / 1000) for row_id, ms, seq in rows if ms is not None and row_id not in kept]


def _mark(tx: Conn, layout: str, now: int, refusal: LdapRefusal, settled: Callable[[int], bool],
          issuer_id: Callable[[str], int]) -> set[int]:
    """Mark the rows of one refused entry (those of this pass, and earlier dead letters), or add one."""
    target: tuple[int, int | None] | None
    if refusal.issuer is not None:
        iid = issuer_id(refusal.issuer)
        rows = tx.execute("SELECT id, attempts, last_error FROM ldap_outbox WHERE issuer_id = ? "
                          "AND certificate_id IS NULL", (iid,)).fetchall()
        target = (iid, None)
    else:
        rows = tx.execute("SELECT o.id, o.attempts, o.last_error FROM ldap_outbox o JOIN ldap_projection p "
                          "ON p.certificate_id = o.certificate_id WHERE p.layout = ? AND p.dn_key = ?",
                          (layout, refusal.dn_key)).fetchall()
        newest = tx.execute("SELECT c.issuer_id, c.id FROM ldap_projection p JOIN certificates c "
                            "ON c.id = p.certificate_id WHERE p.layout = ? AND p.dn_key = ? "
                            "ORDER BY c.id DESC LIMIT 1", (layout, refusal.dn_key)).fetchone()
        target = (newest[0], newest[1]) if newest else None
    rows = [r for r in rows if settled(r[0]) or r[2] is not None]
    if not rows:
        if target is None:
            return set()  # an entry the registry knows nothing of (made by hand): only the pass's report names it
        new_id = tx.execute("INSERT INTO ldap_outbox (issuer_id, certificate_id, enqueued_at) VALUES (?, ?, ?) "
                            "RETURNING id", (*target, now)).fetchone()[0]
        rows = [(new_id, 0, None)]
    for row_id, attempts, _ in rows:
        tx.execute("UPDATE ldap_outbox SET attempts = ?, last_error = ?, next_attempt_at = ? WHERE id = ?",
                   (attempts + 1, refusal.reason[:1000], now + retry_delay(attempts + 1), row_id))
    return {r[0] for r in rows}


def refused(conn: Conn, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """(number of dead letters, the oldest ``limit`` of them: issuer, serial, DN, attempts, reason, next try)."""
    count = conn.execute("SELECT COUNT(*) FROM ldap_outbox WHERE last_error IS NOT NULL").fetchone()[0]
    rows = conn.execute(
        "SELECT i.name, c.serial_hex, p.dn, o.attempts, o.last_error, o.next_attempt_at FROM ldap_outbox o "
        "JOIN issuers i ON i.id = o.issuer_id LEFT JOIN certificates c ON c.id = o.certificate_id "
        "LEFT JOIN ldap_projection p ON p.certificate_id = o.certificate_id "
        "WHERE o.last_error IS NOT NULL ORDER BY o.id LIMIT ?", (limit,)).fetchall()
    return int(count), [{"issuer": r[0], "serial_hex": r[1], "dn": r[2], "attempts": int(r[3]), "reason": r[4],
                         "next_attempt_at": r[5]} for r in rows]
