"""Make the directory match the registry: the registry is the desired state, LDAP is made to follow it.

Three passes, one engine:
- ``incremental()`` drains the outbox (rows written in the same transaction as each import, revocation,
  hold release and CRL publication) plus certificates that expired since the last pass: only the entries
  they touch are read and diffed. Rows are deleted only after their entries were written, so a directory
  that is down keeps them, and a crash replays them (the diff makes a replay a no-op).
- ``full()`` reads every entry under ``ou=AC``, ``ou=Personnes`` and ``ou=Structures`` and repairs any
  drift (entries or values added, changed or removed by hand, expired certificates, a lost write).
- ``verify()`` is ``full()`` without writing anything, to LDAP or to the registry.

The desired entries come from ``desired.DesiredState`` (registry rows and projections, CA entries with
the published CRLs). Writes go through ``writer.PlanWriter``: certificate values that must leave are
removed first, each by a modify of its own. A write the directory refuses for good (schema violation, ...)
is reported and logged as a rejection; it does not block the others, and the outbox rows of its entry stay
as dead letters (reason, attempts, retried with backoff: ``registry.dead_letters``) until a pass writes it.
Connection trouble raises ``LdapUnavailable`` and leaves the outbox as it was: the caller retries with backoff.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from directory import histogram
from directory.config import Config
from directory.ldap import ber, containers, dn, skeleton
from directory.ldap.client import Entry, LdapClient
from directory.ldap.desired import DesiredState, entry_from_rows, inputs_hash
from directory.ldap.diff import Drift, Plan, plan
from directory.ldap.projection import BRANCHES, DesiredEntry, Layout
from directory.ldap.writer import PlanWriter
from directory.registry.dead_letters import LdapRefusal
from directory.registry.store import Registry

CHUNK = 2000  # entries planned and fetched per round (writes: writer.CHUNK)
FULL_THRESHOLD = 20000  # an outbox deeper than this is cheaper to settle with one full pass


class SyncCancelled(RuntimeError):
    """The service is stopping: the pass ends between two chunks; the outbox still holds its rows."""


class SyncBusy(RuntimeError):
    """Another process holds the sync lock (a CLI sync while the service syncs, or the reverse)."""


@dataclass
class SyncReport:
    mode: str
    entries_read: int = 0
    added: int = 0
    modified: int = 0
    deleted: int = 0
    outbox_done: int = 0
    drift: Drift = field(default_factory=Drift)
    rejected: list[dict[str, str | int]] = field(default_factory=list)
    unpublishable: int = 0
    seconds: float = 0.0

    def writes(self) -> int:
        return self.added + self.modified + self.deleted

    def as_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "entries_read": self.entries_read, "added": self.added,
                "modified": self.modified, "deleted": self.deleted, "outbox_done": self.outbox_done,
                "drift": self.drift.as_dict(), "drift_total": self.drift.total(),
                "rejected": self.rejected, "unpublishable": self.unpublishable, "seconds": round(self.seconds, 3)}


def client_for(config: Config, window: int = 8) -> LdapClient:
    """Eight writes in flight: measured best against slapd's single mdb writer here (64: contention)."""
    import ssl

    ldap = config.ldap
    assert ldap is not None
    context = ssl.create_default_context(cafile=str(ldap.tls_ca_file)) if ldap.tls_ca_file else None
    return LdapClient(ldap.urls, ldap.bind_dn, ldap.read_password(), timeout=ldap.timeout, window=window,
                      tls_context=context, start_tls=ldap.start_tls)


@contextlib.contextmanager
def sync_lock(config: Config, wait: bool = True) -> Iterator[None]:
    """The file lock that keeps passes (and ``ldap export``) of every process on this machine apart."""
    path = config.data_dir / "ldap-sync.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise SyncBusy("another LDAP sync is running") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class DirectorySync:
    """One engine per process; its passes run one at a time (a file lock also keeps processes apart)."""

    def __init__(self, config: Config, registry: Registry, client: LdapClient | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if config.ldap is None:
            raise ValueError("no [ldap] section in the configuration")
        self.config = config
        self.registry = registry
        self.client = client or client_for(config)
        self.clock = clock
        self.layout = Layout.from_config(config.ldap)
        self.lock_path = config.data_dir / "ldap-sync.lock"
        self.stop_requested: Callable[[], bool] = lambda: False
        self.desired = DesiredState(config, registry, self.layout)
        self._verified: dict[str, tuple[int, bytes]] = {}  # entry key -> (registry inputs, directory bytes)
        self._containers: dict[str, DesiredEntry] = {}  # the pass's desired intermediate entries (for replans)
        self.writer = PlanWriter(self.client, registry.certificate_ders, self._replan, self._check_stop)

    def _check_stop(self) -> None:
        if self.stop_requested():
            raise SyncCancelled("stopping")

    # -- locking -------------------------------------------------------------------------------------
    def _locked(self, wait: bool) -> contextlib.AbstractContextManager[None]:
        return sync_lock(self.config, wait)

    # -- passes --------------------------------------------------------------------------------------
    def full(self, dry_run: bool = False, wait: bool = True,
             progress: Callable[[int, int], None] | None = None) -> SyncReport:
        report = SyncReport("verify" if dry_run else "full")
        started = time.monotonic()
        with self._locked(wait), _no_cyclic_gc():
            now = int(self.clock())
            depth, top, _ = self.registry.ldap_outbox_stats()
            projections = self.desired.project_all(store=not dry_run)
            rows_of = self.desired.rows(now, projections if dry_run else {})
            cas = self.desired.ca_entries()
            nodes = containers.above(self.layout, (rows[0][1] for rows in rows_of.values()))
            self._containers = dict(nodes)
            report.unpublishable = self.registry.ldap_unplaced(self.layout.digest, now)
            if dry_run:  # computed in memory only
                unplaced = self.desired.unplaced
                report.unpublishable += sum(1 for cid in unplaced if self.registry.published_state(cid, now))
            if not dry_run:
                skeleton.ensure(self.client, skeleton.skeleton(self.layout))
            plans: list[Plan] = []
            key_of = {rows[0][1]: key for key, rows in rows_of.items()}  # the DN as written: no parsing needed
            branches = self._branch_keys()
            # entries found equal at the last pass, with the same inputs and the same bytes now, are still
            # equal: they are neither decoded nor diffed again (a repair pass only; verify compares all)
            verified, self._verified = (self._verified if not dry_run else {}), {}
            expected = len(rows_of) + len(cas) + len(nodes)
            for entry in self._read_all():
                report.entries_read += 1
                if report.entries_read % CHUNK == 0:
                    self._check_stop()
                    if progress is not None:  # reading: entries read of those expected
                        progress(report.entries_read, max(expected, report.entries_read))
                key = key_of.get(entry.dn) or dn.key(entry.dn)
                rows = rows_of.pop(key, None)
                if rows is None:
                    want = cas.pop(key, None) or nodes.pop(key, None)
                    if want is None and key in branches:
                        continue
                    p = plan(want, entry)
                else:
                    inputs = inputs_hash(rows)
                    fingerprint = entry.fingerprint()
                    if verified.get(key) == (inputs, fingerprint):
                        self._verified[key] = (inputs, fingerprint)
                        continue
                    p = plan(entry_from_rows(rows), entry)
                    if p is None:
                        self._verified[key] = (inputs, fingerprint)
                if p is not None:
                    plans.append(p)
            plans += [p for rows in rows_of.values() if (p := plan(entry_from_rows(rows), None)) is not None]
            plans += [p for want in (*cas.values(), *nodes.values()) if (p := plan(want, None)) is not None]
            for p in plans:
                report.drift.add(p.drift)
            if not dry_run:
                self.writer.write(plans, report, progress)
                changed_at = self.registry.ldap_outbox_settle(self.layout.digest, now, up_to=top,
                                                              refusals=self._refusals(report))
                report.outbox_done = depth
                self.registry.state_set({"layout": self.layout.digest, "expired_checked": str(now),
                                         "last_full": str(now), "last_full_drift": str(report.drift.total()),
                                         # what the last verify found is repaired now (passes hold one lock:
                                         # this one started after that verify ended); refusals stay listed
                                         "last_verify_repaired": str(now),
                                         "last_rejected": json.dumps(report.rejected[:50]),
                                         **self._visibility(changed_at)})
            else:
                self.registry.state_set({"last_verify": str(now), "last_verify_drift": str(report.drift.total()),
                                         "last_verify_repaired": ""})
        report.seconds = time.monotonic() - started
        return report

    def _visibility(self, changed_at: list[float]) -> dict[str, str]:
        """The directory's revocation-to-visibility histogram with these changes added (kept in the registry:
        this runs in the worker process, the service exposes it)."""
        if not changed_at:
            return {}
        now = self.clock()
        return {"visibility": histogram.merge(self.registry.state_get("visibility"),
                                              [max(0.0, now - t) for t in changed_at])}

    def verify(self) -> SyncReport:
        return self.full(dry_run=True)

    def incremental(self, limit: int = 5000, wait: bool = True) -> SyncReport:
        """Settle the oldest ``limit`` outbox rows and the certificates that expired since the last pass."""
        if self.registry.state_get("layout") != self.layout.digest:
            return self.full(wait=wait)  # never synced with this layout: only a full pass knows every entry
        depth, _, _ = self.registry.ldap_outbox_stats()
        if depth > FULL_THRESHOLD:
            return self.full(wait=wait)
        report = SyncReport("incremental")
        started = time.monotonic()
        with self._locked(wait):
            now = int(self.clock())
            rows = self.registry.ldap_outbox(limit, now=now)  # dead letters wait for their retry time
            checked = int(self.registry.state_get("expired_checked") or now)
            certificate_ids = {cid for _, _, cid in rows if cid is not None}
            certificate_ids.update(self.registry.expired_between(checked, now))
            issuers = {name for _, name, cid in rows if cid is None}
            if certificate_ids or issuers:
                self.desired.project_some(sorted(certificate_ids))
                keys = self.registry.ldap_dn_keys(self.layout.digest, sorted(certificate_ids))
                desired = self.desired.entries(now, sorted(keys))
                targets: dict[str, str] = {k: desired[k].dn if k in desired else "" for k in keys}
                for issuer in issuers:
                    entry = self.desired.ca_entry(issuer)
                    if entry is not None:
                        desired[dn.key(entry.dn)] = entry
                        targets[dn.key(entry.dn)] = entry.dn
                # entries that must go are read under the DN they were projected with
                for key, stored in self.desired.projected_dns(keys):
                    if not targets.get(key):
                        targets[key] = stored
                # intermediate entries: those above the entries kept are ensured, those above the entries
                # that go are pruned once written (if nothing else is below them)
                self._containers = containers.above(self.layout, [e.dn for e in desired.values()])
                for key, entry in self._containers.items():
                    desired.setdefault(key, entry)
                    targets.setdefault(key, entry.dn)
                emptied = containers.above(self.layout, [d for k, d in targets.items() if d and k not in desired])
                actual = self.client.read([d for d in targets.values() if d])
                report.entries_read = sum(1 for e in actual.values() if e is not None)
                by_key = {dn.key(e.dn): e for e in actual.values() if e is not None}
                plans = [p for key in targets if (p := plan(desired.get(key), by_key.get(key))) is not None]
                for p in plans:
                    report.drift.add(p.drift)
                self.writer.write(plans, report)
                report.deleted += containers.prune(self.client, [e.dn for k, e in emptied.items()
                                                                 if k not in desired])
            changed_at = self.registry.ldap_outbox_settle(self.layout.digest, now, ids=[row[0] for row in rows],
                                                          refusals=self._refusals(report))
            report.outbox_done = len(rows)
            self.registry.state_set({"expired_checked": str(now), "last_incremental": str(now),
                                     **self._visibility(changed_at)})
        report.seconds = time.monotonic() - started
        return report

    # -- directory -----------------------------------------------------------------------------------
    def _branch_keys(self) -> set[str]:
        return {dn.key(self.layout.suffix), *(dn.key(self.layout.branch_dn(b)) for b in BRANCHES)}

    def _read_all(self) -> Iterator[Entry]:
        for branch in BRANCHES:
            yield from self.client.search(self.layout.branch_dn(branch), ber.SCOPE_SUBTREE, ("*",))


    def _replan(self, plans: list[Plan]) -> list[Plan | None]:
        """Someone else wrote meanwhile: read those entries again and plan them again (None: nothing left)."""
        now = int(self.clock())
        desired = {**self.desired.ca_entries(), **self._containers,
                   **self.desired.entries(now, [dn.key(p.dn) for p in plans])}
        actual = self.client.read([p.dn for p in plans])
        return [plan(desired.get(dn.key(p.dn)), actual.get(p.dn)) for p in plans]

    def _refusals(self, report: SyncReport) -> list[LdapRefusal]:
        """The entries the directory refused, as the registry keeps them (CA entries by issuer)."""
        if not report.rejected:
            return []
        issuers = {dn.key(self.layout.ca_dn(name)): name for name, *_ in self.registry.issuer_certificates()}
        out: dict[str, LdapRefusal] = {}
        for item in report.rejected:
            key = str(item["key"])
            reason = f"{item['operation']} {item['dn']}: {item['text']}"
            out.setdefault(key, LdapRefusal(reason, dn_key=None if key in issuers else key, issuer=issuers.get(key)))
        return list(out.values())


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """A full pass builds a few hundred thousand small acyclic objects: the cyclic collector would walk
    them again and again (measured: it doubles the pass). Reference counting frees them all the same."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

