"""File descriptors shared out between the listeners, checked at start-up.

Every accepted connection is a descriptor, and the process has ``RLIMIT_NOFILE`` of them. Without a
budget, 20,000 half-open admin connections once used them all and the public listener's ``accept()``
failed. Here each listener's cap (plus the refusals it may still be writing, ``LINGER``, and the connections
asyncio may accept in one go before the cap is checked, ``ACCEPT_BURST``) and a reserve for
everything else (registry, HSM, CRL files, child processes' pipes, logs) must fit under the limit; with
``[http] workers`` the main process's public share is the connections handed over to it, and its
serving processes' connections to it count too (``internal``: its internal listener's cap, and their
channels), or they could take every descriptor it has. The soft limit is raised up to the hard one when
needed; if that is not enough the public cap is lowered (with a warning naming the limit) and the service
refuses to start when even the reserve, the serving processes' share and the admin cap do not fit.
"""

from __future__ import annotations

import logging
import math
import resource
from dataclasses import dataclass

from directory.service.listener import LINGER
from directory.service.sockets import ACCEPT_BURST

log = logging.getLogger(__name__)
RESERVE = 256  # descriptors kept for everything but client connections
MIN_PUBLIC = 16
INTERNAL_CAP_PER_WORKER = 256  # connections a serving process may hold to the main process's application
CHANNELS_PER_WORKER = 4  # the main process's other descriptors per serving process: live.sock, handover.sock, 2 pipes


def share(max_connections: int, workers: int) -> int:
    """One process's share of ``[http] max_connections`` with ``workers`` serving processes: each of them, and
    the main process for the connections they hand over (``directory/service/handover.py``), so that what is
    open on the public port stays within it (a handed-over connection frees its slot in its serving process)."""
    return max(MIN_PUBLIC, math.ceil(max_connections / (workers + 1)))


def internal(workers: int) -> int:
    """The main process's descriptors for ``workers`` serving processes (none for one process): their connections
    to its application (the internal listener's cap, its refusals being read, its accept burst) and their
    channels."""
    if workers <= 1:
        return 0
    return workers * INTERNAL_CAP_PER_WORKER + LINGER + ACCEPT_BURST + workers * CHANNELS_PER_WORKER


class DescriptorBudgetError(RuntimeError):
    """The descriptor limit cannot hold the reserve and the admin listener's cap."""


@dataclass(frozen=True)
class Budget:
    limit: int  # RLIMIT_NOFILE (soft) after any raise
    public_cap: int
    admin_cap: int | None


def plan(public_cap: int, admin_cap: int | None, reserve: int = RESERVE, internal: int = 0) -> Budget:
    """Caps that fit ``RLIMIT_NOFILE`` with ``reserve`` and ``internal`` (``internal()``) to spare (raising the
    soft limit when it can)."""
    admin_need = admin_cap + LINGER + ACCEPT_BURST if admin_cap is not None else 0
    need = reserve + internal + admin_need + public_cap + LINGER + ACCEPT_BURST
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file descriptor limit from %d to %d: %s", soft, target, exc)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return Budget(need if soft == resource.RLIM_INFINITY else soft, public_cap, admin_cap)
    room = soft - reserve - internal - admin_need - LINGER - ACCEPT_BURST
    if room < MIN_PUBLIC:
        workers = f", the serving processes' connections ({internal})" if internal else ""
        raise DescriptorBudgetError(
            f"the file descriptor limit ({soft}, hard {hard}) cannot hold {reserve} reserved for the service"
            f"{workers}, the admin listener ({admin_need}) and at least {MIN_PUBLIC} public connections: raise it "
            f"(LimitNOFILE= in the systemd unit, ulimit -n) or lower [admin] max_connections"
            + (" or [http] workers" if internal else ""))
    log.warning("file descriptor limit %d (hard %d): public connections capped at %d instead of %d "
                "([http] max_connections, or this process's share of it; raise the limit to keep it)", soft, hard,
                room, public_cap)
    return Budget(soft, room, admin_cap)
