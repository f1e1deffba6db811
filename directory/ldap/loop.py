"""The directory sync as it runs in production: a loop of passes with polling, backoff and a periodic full pass.

A full reconciliation at start and every ``[ldap] reconcile_interval``; in between, the outbox is drained
as soon as a change is seen (polled every 0.2 s: changes come from the CLI, the admin side, other
processes), and at least every 30 s for certificates that expire. A directory that is down or stalled is
retried with capped exponential backoff (0.5 s doubling to 60 s); the outbox keeps every change meanwhile.
A write the directory refuses leaves its rows as dead letters, taken again when their retry time comes.
It runs in its own process (``annuaire ldap worker``, started by ``annuaire serve``), so its CPU never
competes with OCSP answers and CRL signing for the interpreter lock.

With several nodes on one PostgreSQL registry, one worker drives the outbox: the holder of the
``ldap-sync`` lease. The others stand by and try to take it over every ``LEASE_CHECK`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time

from directory.ldap.client import LdapError, LdapUnavailable
from directory.ldap.sync import DirectorySync, SyncBusy, SyncCancelled, SyncReport

log = logging.getLogger(__name__)
POLL = 0.2
EXPIRY_CHECK = 30.0
BACKOFF_FIRST, BACKOFF_CAP = 0.5, 60.0
LEASE_CHECK = 2.0


class SyncLoop:
    """Runs passes of ``engine`` until ``stopping`` is set (from a signal handler or another thread)."""

    def __init__(self, engine: DirectorySync, interval: float) -> None:
        self.engine = engine
        self.interval = interval
        self.stopping = threading.Event()
        engine.stop_requested = self.stopping.is_set
        self.failures = 0
        self.last_report: SyncReport | None = None
        self.lease = engine.registry.lease("ldap-sync")
        self.leading = False

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        engine = self.engine
        next_full = 0.0
        next_expiry = time.monotonic() + EXPIRY_CHECK
        while not self.stopping.is_set():
            delay = POLL
            was_leading = self.leading
            if not self._lead():
                self.stopping.wait(LEASE_CHECK)
                continue
            if not was_leading:
                next_full = 0.0  # taking over: reconcile everything first
            try:
                now = time.monotonic()
                if now >= next_full:
                    report = engine.full(wait=False)
                    next_full = now + self.interval
                    next_expiry = now + EXPIRY_CHECK
                    self._done(report)
                elif engine.registry.ldap_outbox_due(int(engine.clock())) or now >= next_expiry:
                    report = engine.incremental(wait=False)
                    next_expiry = now + EXPIRY_CHECK
                    self._done(report)
            except SyncCancelled:
                break
            except SyncBusy:
                delay = 1.0  # a CLI sync holds the lock: it does the work, we look again soon
            except (LdapError, OSError) as exc:
                delay = self._failed(exc, warn_only=isinstance(exc, LdapUnavailable))
            except Exception as exc:  # a bug must not kill publication: log it, back off, try again
                if self.stopping.is_set():
                    break
                log.exception("LDAP sync pass failed")
                delay = self._failed(exc, warn_only=True, logged=True)
            self.stopping.wait(delay)
        engine.client.close()
        self.lease.release()

    def _lead(self) -> bool:
        """Hold the ``ldap-sync`` lease (always granted on SQLite); log when it changes hands."""
        try:
            held = self.lease.try_acquire()
        except Exception as exc:  # the registry unreachable: not the leader until it answers again
            log.debug("ldap-sync lease not checked: %s", exc)
            held = False
        if held != self.leading:
            self.leading = held
            if self.engine.registry.notifies:
                log.info("this node %s the directory sync", "now drives" if held else "no longer drives")
        return held

    def _done(self, report: SyncReport) -> None:
        if self.failures:
            log.info("directory reachable again after %d failed attempts", self.failures)
            self._record({"last_error": "", "failures": "0"})
        self.failures = 0
        self.last_report = report
        if report.writes() or report.rejected or report.mode == "full":
            log.info("ldap %s: %d added, %d modified, %d deleted (%d differences), %d refused, %d outbox rows (%.2f s)",
                     report.mode, report.added, report.modified, report.deleted, report.drift.total(),
                     len(report.rejected), report.outbox_done, report.seconds)

    def _failed(self, exc: Exception, warn_only: bool, logged: bool = False) -> float:
        self.failures += 1
        error = f"{type(exc).__name__}: {exc}"
        delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (self.failures - 1))
        self._record({"last_error": error[:500], "failures": str(self.failures)})
        if not logged and (self.failures == 1 or delay >= BACKOFF_CAP):
            level = logging.WARNING if warn_only else logging.ERROR
            log.log(level, "directory sync failed (%s); changes stay in the outbox, retry in %.1f s",
                    error, delay)
        return delay

    def _record(self, values: dict[str, str]) -> None:
        """Keep the state where status pages and other processes read it (the registry)."""
        try:
            self.engine.registry.state_set(values)
        except Exception as exc:  # the registry failing is reported by its own checks
            log.debug("sync state not recorded: %s", exc)
