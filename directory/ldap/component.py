"""The directory sync inside ``annuaire serve``: one worker thread, never in the way of CRLs or OCSP.

A full reconciliation at start and every ``[ldap] reconcile_interval``; in between, the outbox is drained
as soon as a change is committed in this process (listener) or seen by polling (changes made by the CLI or
another process), and at least every 30 s for certificates that expire. A directory that is down or
stalled is retried with capped exponential backoff (0.5 s doubling to 60 s); the outbox keeps every change
meanwhile. The thread only reads the registry and deletes outbox rows, so CRL signing and OCSP answers never
wait for LDAP.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from directory.ldap.client import LdapError, LdapUnavailable
from directory.ldap.sync import DirectorySync, SyncBusy, SyncCancelled, SyncReport

if TYPE_CHECKING:
    from directory.service.app import Service

log = logging.getLogger(__name__)
POLL = 0.2
EXPIRY_CHECK = 30.0
BACKOFF_FIRST, BACKOFF_CAP = 0.5, 60.0


class LdapSyncComponent:
    name = "ldap-sync"

    def __init__(self) -> None:
        self.engine: DirectorySync | None = None
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.failures = 0
        self.last_error: str | None = None
        self.last_report: SyncReport | None = None
        self.last_success: float | None = None

    async def start(self, service: Service) -> None:
        if service.config.ldap is None:
            return
        self.engine = DirectorySync(service.config, service.registry)
        self.engine.stop_requested = self.stopping.is_set
        self.interval = float(service.config.ldap.reconcile_interval or 3600)
        service.registry.add_listener(lambda *_: self.wake.set())
        self.thread = threading.Thread(target=self._run, name="ldap-sync", daemon=True)
        self.thread.start()

    def state(self) -> dict[str, Any]:
        """For status pages: last outcome, failures in a row, outbox depth is read from the registry."""
        return {"last_success": self.last_success, "last_error": self.last_error, "failures": self.failures,
                "last_report": self.last_report.as_dict() if self.last_report else None}

    def _run(self) -> None:
        assert self.engine is not None
        engine = self.engine
        next_full = 0.0
        next_expiry = time.monotonic() + EXPIRY_CHECK
        while not self.stopping.is_set():
            delay = POLL
            try:
                now = time.monotonic()
                if now >= next_full:
                    report = engine.full(wait=False)
                    next_full = now + self.interval
                    next_expiry = now + EXPIRY_CHECK
                    self._done(report)
                elif engine.registry.ldap_outbox_stats()[0] or now >= next_expiry:
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
            if delay == POLL:
                self.wake.wait(POLL)
                self.wake.clear()
            else:
                self.stopping.wait(delay)
        engine.client.close()

    def _done(self, report: SyncReport) -> None:
        if self.failures:
            log.info("directory reachable again after %d failed attempts", self.failures)
        self.failures = 0
        self.last_error = None
        self.last_success = time.time()
        self.last_report = report
        if report.writes() or report.rejected or report.mode == "full":
            log.info("ldap %s: %d added, %d modified, %d deleted, drift %d, %d refused, %d outbox rows (%.2f s)",
                     report.mode, report.added, report.modified, report.deleted, report.drift.total(),
                     len(report.rejected), report.outbox_done, report.seconds)

    def _failed(self, exc: Exception, warn_only: bool, logged: bool = False) -> float:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (self.failures - 1))
        if not logged and (self.failures == 1 or delay >= BACKOFF_CAP):
            level = logging.WARNING if warn_only else logging.ERROR
            log.log(level, "directory sync failed (%s); changes stay in the outbox, retry in %.1f s",
                    self.last_error, delay)
        return delay

    async def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.thread.join, 30)
