"""The slapd that ``annuaire serve`` runs itself when ``[ldap] managed = true`` (demo, single machine).

It listens on the loopback address of the first ``[ldap] urls`` entry, keeps its database under
``DATA_DIR/ldap``, uses ``deploy/slapd/provider.conf`` (indexes, ACLs) and stops with the service.
At start it makes sure the DIT skeleton exists (suffix, ``ou=AC``, ``ou=Personnes``, ``ou=Structures``)
and that the service's bind entry carries the password from ``[ldap] password_file`` (hashed: ``{ARGON2}``).
The slapd root password is random per start, only its hash is in the private slapd.conf (0600).
When the service runs as root, slapd runs as an unprivileged user that owns ``DATA_DIR/ldap``
(``slapd.unprivileged_user``). A slapd that dies is started again with backoff (1 s doubling to 60 s),
on the same data; meanwhile /readyz says so and the LDAP worker keeps every change in the outbox.
Production points ``[ldap] urls`` at an external OpenLDAP instead (``managed = false``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from directory.config import Config, LdapConfig
from directory.ldap import ber, skeleton
from directory.ldap.client import LdapClient, LdapError, Modify
from directory.ldap.projection import Layout
from directory.ldap.slapd import PROVIDER_TEMPLATE, Slapd, SlapdConfig, SlapdError, hash_password, unprivileged_user

if TYPE_CHECKING:
    from directory.service.app import Service

log = logging.getLogger(__name__)
RESTART_FIRST, RESTART_CAP = 1.0, 60.0


def managed_slapd(config: Config) -> Slapd:
    """The Slapd for ``config`` (not started). Refuses anything but an ldap:// URL on a loopback address."""
    ldap = config.ldap
    if ldap is None or not ldap.managed:
        raise SlapdError("[ldap] managed is not set")
    url = urlsplit(ldap.urls[0])
    if url.scheme != "ldap" or url.hostname not in ("127.0.0.1", "localhost", "::1") or not url.port:
        raise SlapdError(f"a managed slapd listens on ldap://127.0.0.1:PORT, not {ldap.urls[0]}")
    return Slapd(SlapdConfig(directory=config.data_dir / "ldap", suffix=ldap.suffix,
                             root_dn=f"cn=admin,{ldap.suffix}", root_password=secrets.token_urlsafe(24),
                             port=url.port, host="127.0.0.1" if url.hostname == "localhost" else url.hostname,
                             template=PROVIDER_TEMPLATE, service_dn=ldap.bind_dn, user=unprivileged_user()))


def ensure_skeleton(slapd: Slapd, ldap: LdapConfig) -> None:
    """The skeleton (``skeleton.py``) and the service's bind entry, created when missing, as slapd's root DN;
    the bind entry's password set from ``[ldap] password_file``. ``SlapdError`` when slapd refuses."""
    service = skeleton.service_entry(ldap.bind_dn, hash_password(ldap.read_password()))
    password = service.attributes["userPassword"][0]
    try:
        with LdapClient([slapd.config.url], slapd.config.root_dn, slapd.config.root_password) as client:
            skeleton.ensure(client, [*skeleton.skeleton(Layout.from_config(ldap)), service])
            # the password file is the truth: keep the bind entry in step with it (a fresh salt each start)
            result = client.apply([Modify(ldap.bind_dn, ((ber.MOD_REPLACE, "userPassword", (password,)),))])[0]
    except LdapError as exc:
        raise SlapdError(f"DIT skeleton not written: {exc}") from None
    if not result.ok:
        raise SlapdError(f"cannot set the password of {ldap.bind_dn}: {result.text()}")


class ManagedLdapComponent:
    """Starts the private slapd with the service, starts it again when it dies, stops it on exit."""

    name = "managed-ldap"

    def __init__(self) -> None:
        self.slapd: Slapd | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.restarts = 0
        self.started = 0.0

    async def start(self, service: Service) -> None:
        ldap = service.config.ldap
        if ldap is None or not ldap.managed:
            return
        self.slapd = managed_slapd(service.config)
        self.ldap = ldap
        loop = asyncio.get_running_loop()
        # on the main thread (a short wait at start-up): slapd then dies with us even if we are SIGKILLed
        self.slapd.start(die_with_parent=True)
        self.started = time.monotonic()
        await loop.run_in_executor(None, ensure_skeleton, self.slapd, ldap)
        log.info("managed slapd listening on %s (data in %s%s)", self.slapd.config.url, self.slapd.config.directory,
                 f", running as {self.slapd.config.user}" if self.slapd.config.user else "")
        service.readiness_checks["ldap"] = self.readiness
        self.task = asyncio.create_task(self._supervise())

    async def readiness(self) -> str | None:
        if self.slapd is None or self.slapd.process is None or self.slapd.process.poll() is not None:
            return "managed slapd is not running"
        return None

    async def _supervise(self) -> None:
        """Start slapd again, with backoff, each time it exits (on its own data: nothing is lost)."""
        assert self.slapd is not None
        slapd, loop = self.slapd, asyncio.get_running_loop()
        while not self.stopping:
            await asyncio.sleep(0.5)
            if slapd.process is None or slapd.process.poll() is None or self.stopping:
                continue
            self.restarts = 0 if time.monotonic() - self.started > 300 else self.restarts + 1
            delay = min(RESTART_CAP, RESTART_FIRST * 2 ** self.restarts)
            log.error("managed slapd exited with %s; restarting in %.0f s (the outbox keeps every change; "
                      "see %s)", slapd.process.returncode, delay, slapd.log_file)
            await asyncio.sleep(delay)
            if self.stopping:
                return
            self.started = time.monotonic()
            try:
                await loop.run_in_executor(None, slapd.prepare)
                slapd.spawn(die_with_parent=True)  # on this (the main) thread, for the parent-death signal
                await loop.run_in_executor(None, slapd.wait_listening)
                await loop.run_in_executor(None, ensure_skeleton, slapd, self.ldap)
            except (SlapdError, OSError) as exc:
                log.error("managed slapd did not start again: %s", exc)
                continue
            log.info("managed slapd running again (pid %d)", slapd.process.pid)

    async def stop(self) -> None:
        self.stopping = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.slapd is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.slapd.stop)
