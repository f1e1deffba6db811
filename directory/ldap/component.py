"""``annuaire serve``'s directory part: runs ``annuaire ldap worker`` as a supervised child process.

The sync is CPU work in Python (decoding, diffing); in its own process it never holds the interpreter
lock that OCSP answers and CRL signing need. The child is restarted (with backoff) if it dies, and
stopped with SIGTERM (it finishes the chunk it is writing, the outbox keeps the rest).

Writes the directory refused (dead letters in the outbox) are a reason in /readyz: failing it, or only
named there with ``[ldap] refusals_fail_readiness = false``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from directory.ldap.metrics import LdapMetrics

if TYPE_CHECKING:
    from directory.service.app import Service

log = logging.getLogger(__name__)
RESTART_FIRST, RESTART_CAP = 1.0, 60.0


class LdapSyncComponent:
    name = "ldap-sync"

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.restarts = 0

    async def start(self, service: Service) -> None:
        if service.config.ldap is None:
            return
        self.command = [sys.executable, "-m", "directory.cli", "--config", str(service.config.path),
                        "ldap", "worker"]
        self._spawn()
        self.task = asyncio.create_task(self._supervise())
        self.watch_refusals(service)
        metrics = LdapMetrics(service.registry)
        service.metrics.register(metrics.collect)
        service.metrics.visibility_observed_elsewhere("ldap", metrics.visibility)

    def watch_refusals(self, service: Service) -> None:
        """Name the directory's refusals in /readyz: failing it, or as a warning when so configured."""
        assert service.config.ldap is not None
        self.registry = service.registry
        checks = service.readiness_checks if service.config.ldap.refusals_fail_readiness else \
            service.readiness_warnings
        checks["ldap-sync"] = self.refusals

    async def refusals(self) -> str | None:
        """The writes the directory refused and that wait as dead letters, with the first reason."""
        count, first = await asyncio.get_running_loop().run_in_executor(None, self.registry.ldap_refused, 1)
        return refused_text(count, first)

    def _spawn(self) -> None:
        # stdout/stderr are the service's: one log stream; the child gets no terminal signals of its own
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, start_new_session=True,
                                        env={**os.environ, "ANNUAIRE_SERVICE_PID": str(os.getpid())})
        self.started = time.monotonic()
        log.info("LDAP sync worker started (pid %d)", self.process.pid)

    async def _supervise(self) -> None:
        while not self.stopping:
            await asyncio.sleep(0.5)
            if self.process is None or self.process.poll() is None or self.stopping:
                continue
            code = self.process.returncode
            self.restarts = 0 if time.monotonic() - self.started > 300 else self.restarts + 1
            delay = min(RESTART_CAP, RESTART_FIRST * 2 ** self.restarts)
            log.error("LDAP sync worker exited with %s; restarting in %.0f s (the outbox keeps every change)",
                      code, delay)
            await asyncio.sleep(delay)
            if not self.stopping:
                self._spawn()

    async def stop(self) -> None:
        self.stopping = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, process.wait, 30)
        except subprocess.TimeoutExpired:
            log.error("LDAP sync worker did not stop within 30 s: killed (the outbox keeps its work)")
            process.kill()
            await loop.run_in_executor(None, process.wait)


def refused_text(count: int, first: list[dict[str, Any]]) -> str | None:
    """``2 directory writes refused (kept, retried): modify cn=...: 21 ...``; None when there are none."""
    if not count:
        return None
    reason = f": {first[0]['reason']}" if first else ""
    return f"{count} directory write{'s' if count != 1 else ''} refused (kept in the outbox, retried){reason}"
