"""The token's availability as the signer sees it: logged once when it goes away, once when it is back.

Every failed attempt is counted (``annuaire_hsm_errors_total``) and said at debug level; an operator
reading the log needs the two moments that matter: since when the HSM could not be used and why, and
when it could again (after how long).
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("directory.hsm.signer")


class Availability:
    def __init__(self, token_label: str) -> None:
        self.token_label = token_label
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._reason = ""

    @property
    def down_since(self) -> float | None:
        """Monotonic time of the first failure of the current outage (None: available)."""
        return self._down_since

    def down(self, reason: str) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since, self._reason = time.monotonic(), reason
        log.warning("HSM: token %r cannot be used: %s", self.token_label, reason)

    def up(self) -> None:
        if self._down_since is None:  # the common case, without the lock
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.info("HSM: token %r is available again after %.1f s (it was: %s)", self.token_label,
                     time.monotonic() - since, self._reason)
