"""systemd's service notification protocol (sd_notify(3)), spoken directly: one datagram per message.

Under ``Type=notify`` systemd sets ``NOTIFY_SOCKET``; ``annuaire serve`` sends ``READY=1`` once its
readiness (what ``/readyz`` reports) is clear, ``STATUS=`` lines saying what it waits for, ``STOPPING=1``
on shutdown. With ``WatchdogSec=`` systemd also sets ``WATCHDOG_USEC``: a task on the event loop sends
``WATCHDOG=1`` every half period, so a loop that stops turning (a blocking call, a deadlock) stops the
pings and systemd kills and restarts the service. Without ``NOTIFY_SOCKET`` every call does nothing.

The variables are taken out of the environment when read, so the children (the LDAP worker, the managed
slapd) neither inherit nor answer for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, MutableMapping

log = logging.getLogger(__name__)
ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Where to send notifications (None: not run by systemd) and the watchdog period, if any."""

    def __init__(self, address: str | None, watchdog_seconds: float | None = None) -> None:
        self.address = address
        self.watchdog_seconds = watchdog_seconds

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Read (and remove) systemd's variables. A watchdog meant for another process (``WATCHDOG_PID``)
        or a malformed value is ignored, as sd_watchdog_enabled(3) does."""
        env = os.environ if environ is None else environ
        values = {name: env.pop(name, None) for name in ENVIRONMENT}
        address = values["NOTIFY_SOCKET"] or None
        if address is not None and not address.startswith(("/", "@")):
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket: not notifying", address)
            address = None
        watchdog = None
        usec, pid = values["WATCHDOG_USEC"], values["WATCHDOG_PID"]
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec) / 1_000_000
        return cls(address, watchdog)

    def send(self, *fields: str) -> bool:
        """One datagram of ``KEY=VALUE`` lines; False when not under systemd or when it could not be sent
        (never blocks: a full socket buffer drops the message, as the next one will say the same)."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            try:
                sock.sendto("\n".join(fields).encode(), target)
            except OSError as exc:
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
                return False
        return True

    async def ready_when(self, readiness: Callable[[], Awaitable[dict[str, str]]], interval: float = 1.0) -> None:
        """Send ``READY=1`` the first time ``readiness`` reports no problem; until then ``STATUS=`` names
        what is not ready (``systemctl status`` shows it)."""
        if self.address is None:
            return
        last = ""
        while True:
            try:
                problems = await readiness()
            except Exception as exc:  # a failing check is a reason to wait, not the end of the announcement
                problems = {"readiness": f"{type(exc).__name__}: {exc}"}
            if not problems:
                self.send("READY=1", "STATUS=ready")
                log.info("ready: systemd notified")
                return
            status = "not ready: " + "; ".join(f"{k}: {v}" for k, v in sorted(problems.items()))
            if status != last:
                self.send(f"STATUS={status[:1000]}")
                last = status
            await asyncio.sleep(interval)

    async def feed_watchdog(self) -> None:
        """``WATCHDOG=1`` every half period, from the event loop itself (the loop's liveness is the point)."""
        if self.address is None or self.watchdog_seconds is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_seconds / 2)


class Notifications:
    """The tasks ``annuaire serve`` runs for systemd: the watchdog from the start, ready when ready."""

    def __init__(self, notifier: Notifier | None = None) -> None:
        self.notifier = notifier or Notifier.from_environment()
        self.tasks: list[asyncio.Task[None]] = []

    def start_watchdog(self) -> None:
        self.tasks.append(asyncio.create_task(self.notifier.feed_watchdog(), name="systemd-watchdog"))

    def announce_ready(self, readiness: Callable[[], Awaitable[dict[str, str]]]) -> None:
        self.tasks.append(asyncio.create_task(self.notifier.ready_when(readiness), name="systemd-ready"))

    async def stopping(self) -> None:
        """``STOPPING=1`` and the tasks cancelled (the watchdog is not fed while the service winds down:
        ``TimeoutStopSec`` bounds that part)."""
        self.notifier.send("STOPPING=1", "STATUS=stopping")
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
