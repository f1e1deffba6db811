"""Writing a pass's plans to the directory: certificate removals first, then deletes, then adds and modifies.

Order is what keeps a revocation from being held back: every certificate value that must leave (revoked,
on hold, expired, or on an entry that must go) is deleted by a modify of its own (``Plan.removals``), and
all of those are sent before any other write of the pass. No other value of the entry (one the directory
refuses, say) and no failed delete can keep a revoked certificate published. Then entries that must go
(deepest first), then adds and modifies (parents first), pipelined in chunks; a pipelined chunk only holds
entries of one depth, so a child never races its parent (templates with intermediate entries).

A write that raced with another writer (the entry or value already there, or already gone) is read and
planned again once. A write the directory refuses is in the report (``rejected``, with its entry's key):
the sync keeps that entry's outbox rows as dead letters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from directory.ldap import ber, dn
from directory.ldap.client import (
    ALREADY_EXISTS,
    ATTRIBUTE_OR_VALUE_EXISTS,
    NO_SUCH_ATTRIBUTE,
    NO_SUCH_OBJECT,
    Add,
    Delete,
    LdapClient,
    Modify,
    Operation,
    OpResult,
)
from directory.ldap.diff import Plan, removal
from directory.ldap.projection import CERTIFICATE_ATTRIBUTE

log = logging.getLogger(__name__)
RACE_CODES = {ALREADY_EXISTS, NO_SUCH_OBJECT, ATTRIBUTE_OR_VALUE_EXISTS, NO_SUCH_ATTRIBUTE}
CHUNK = 2000


class Tally(Protocol):
    """What a pass wrote and what the directory refused (``SyncReport`` has these fields)."""

    added: int
    modified: int
    deleted: int
    rejected: list[dict[str, str | int]]


class PlanWriter:
    """Writes plans with ``client``; ``replan`` reads the entries of raced plans again and plans them anew."""

    def __init__(self, client: LdapClient, certificate_ders: Callable[[list[int]], dict[int, bytes]],
                 replan: Callable[[list[Plan]], list[Plan | None]], check_stop: Callable[[], None]) -> None:
        self.client = client
        self.certificate_ders = certificate_ders
        self.replan = replan
        self.check_stop = check_stop

    def write(self, plans: Sequence[Plan], tally: Tally, progress: Callable[[int, int], None] | None = None,
              retry: bool = True) -> None:
        refused: set[int] = set()
        raced: dict[int, Plan] = {}
        results: dict[int, OpResult] = {}
        for batch in _chunks([p for p in plans if p.removals]):
            self.check_stop()
            for p, result in zip(batch, self.client.apply([Modify(p.dn, (removal(p),)) for p in batch]), strict=True):
                if result.ok or result.code == NO_SUCH_OBJECT:
                    continue  # gone, or the entry is gone already: what we wanted
                if result.code in RACE_CODES:  # one of the values is gone already: the others may not be
                    raced[id(p)], results[id(p)] = p, result
                else:
                    refused.add(id(p))
                    self._reject(p, result, tally, "remove certificate values from")
        rest = [p for p in plans if p.has_other_writes() and id(p) not in raced]
        deletes = [p for p in rest if p.kind == "delete"]
        others = [p for p in rest if p.kind != "delete"]
        done = 0
        for batch in _by_depth(deletes, deepest_first=True) + _by_depth(others, deepest_first=False):
            self.check_stop()
            for p, result in zip(batch, self.client.apply(self._operations(batch)), strict=True):
                if result.ok:
                    continue
                if result.code in RACE_CODES:
                    raced[id(p)], results[id(p)] = p, result
                else:
                    refused.add(id(p))
                    self._reject(p, result, tally, p.kind)
            done += len(batch)
            if progress is not None:
                progress(done, len(plans))
        for p in plans:
            if id(p) not in refused and id(p) not in raced:
                _count(p, tally)
        if not raced:
            return
        if not retry:  # raced twice: someone keeps changing it; the next pass sees it again
            for key, p in raced.items():
                self._reject(p, results[key], tally, p.kind)
            return
        again = self.replan(list(raced.values()))
        for p, second in zip(raced.values(), again, strict=True):
            if second is None:
                _count(p, tally)  # the other writer did it
        self.write([p for p in again if p is not None], tally, None, retry=False)

    def _operations(self, plans: list[Plan]) -> list[Operation]:
        """Each plan's write (its removals already done); certificate bytes fetched for the whole chunk."""
        wanted = [cid for p in plans for cid in p.add_certificates]
        return operations(plans, self.certificate_ders(wanted) if wanted else {})

    @staticmethod
    def _reject(p: Plan, result: OpResult, tally: Tally, what: str) -> None:
        log.error("directory refused to %s %s: %s", what, p.dn, result.text())
        try:
            key = dn.key(p.dn)
        except dn.DnError:
            key = p.dn.lower()
        tally.rejected.append({"dn": p.dn, "key": key, "operation": what, "code": result.code,
                               "message": result.message, "text": result.text()})


def operations(plans: Sequence[Plan], ders: dict[int, bytes]) -> list[Operation]:
    """The write of each plan, with the bytes of the certificates it adds (``ders``, by id). Also what
    ``ldap export`` turns into LDIF records: the bulk load holds exactly what the sync would add."""
    ops: list[Operation] = []
    for p in plans:
        certs = [ders[cid] for cid in p.add_certificates if cid in ders]
        if p.kind == "delete":
            ops.append(Delete(p.dn))
        elif p.kind == "add":
            ops.append(Add(p.dn, add_values(dict(p.attributes), certs)))
        else:
            changes = list(p.changes)
            if certs:
                changes.append((ber.MOD_ADD, CERTIFICATE_ATTRIBUTE, tuple(certs)))
            ops.append(Modify(p.dn, tuple(changes)))
    return ops


def add_values(attributes: dict[str, list[bytes]], certificates: list[bytes]) -> dict[str, list[bytes]]:
    """An add's attributes (``attributes``, taken over) with the certificates' bytes last, if any."""
    if certificates:
        attributes[CERTIFICATE_ATTRIBUTE] = certificates
    return attributes


def _count(p: Plan, tally: Tally) -> None:
    if p.kind == "add":
        tally.added += 1
    elif p.kind == "delete":
        tally.deleted += 1
    else:
        tally.modified += 1


def _chunks(plans: list[Plan]) -> list[list[Plan]]:
    return [plans[i:i + CHUNK] for i in range(0, len(plans), CHUNK)]


def _by_depth(plans: list[Plan], deepest_first: bool) -> list[list[Plan]]:
    """Chunks of plans of one depth each, in depth order. A child's DN is its parent's with one more RDN in
    front, so it has more commas than its parent whatever the escapes: the comma count orders them."""
    depths: dict[int, list[Plan]] = {}
    for p in plans:
        depths.setdefault(p.dn.count(","), []).append(p)
    return [chunk for depth in sorted(depths, reverse=deepest_first) for chunk in _chunks(depths[depth])]
