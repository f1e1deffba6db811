"""Logging in with the user PIN, and never trying twice a PIN the token refused.

Real HSMs lock the user PIN after a few wrong tries: a refused PIN is remembered and not tried again
until its file or variable says something else (read again at each attempt), and even then not before a
back-off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from directory.hsm.cryptoki import Cryptoki, CryptokiError
from directory.hsm.errors import HsmUnavailable, PinRefused

log = logging.getLogger(__name__)

_PIN_BACKOFF = 30.0
_CKR_PIN_INCORRECT, _CKR_PIN_LOCKED = 0xA0, 0xA4


class PinGuard:
    def __init__(self, pin: str, reader: Callable[[], str] | None, token_label: str,
                 source: str = "the PIN file or variable", rereadable: bool = True) -> None:
        self._pin = pin.encode()
        self._reader = reader
        self._token_label = token_label
        self._source = source  # "file /etc/annuaire/hsm-pin", "environment variable ANNUAIRE_HSM_PIN"
        self._rereadable = rereadable  # an environment variable never changes under a running process
        self._refused: bytes | None = None
        self._refused_until = 0.0

    def _correction(self) -> str:
        """What the operator must do about a refused PIN, true for where it comes from."""
        if self._rereadable:
            return f"correct the PIN in {self._source} (read again at the next attempt)"
        return (f"correct the PIN in {self._source} and restart the service (a running process cannot see a changed "
                "environment variable)")

    def check(self) -> None:
        """Raise ``PinRefused`` unless there is a PIN worth trying (call before opening a session)."""
        if self._refused is not None and self._reader is not None:
            try:
                fresh = self._reader().encode()
            except (OSError, KeyError):
                fresh = self._refused
            if fresh == self._refused:  # a wrong PIN tried again and again locks a real HSM's user PIN
                raise PinRefused(f"PIN refused by token {self._token_label!r} (the user PIN from {self._source}); "
                                 f"not trying the same PIN again: {self._correction()}")
            self._pin, self._refused, self._refused_until = fresh, None, 0.0
        if time.monotonic() < self._refused_until:
            raise PinRefused("PIN refused by the token; backing off before trying again")

    def login(self, raw: Cryptoki, session_handle: int) -> None:
        """``C_Login`` on the session (already logged in counts as success)."""
        try:
            raw.login(session_handle, self._pin)
        except CryptokiError as exc:
            if exc.rv in (_CKR_PIN_INCORRECT, _CKR_PIN_LOCKED):
                self._refused_until = time.monotonic() + _PIN_BACKOFF
                self._refused = self._pin
                what = "locked on" if exc.rv == _CKR_PIN_LOCKED else "refused by"
                log.error("HSM: the token %s refused the user PIN from %s; signing stops until it is corrected: %s",
                          self._token_label, self._source, self._correction())
                raise PinRefused(f"PIN {what} token {self._token_label!r} (the user PIN from {self._source}); "
                                 f"{self._correction()}") from None
            raise HsmUnavailable(f"login failed: CKR 0x{exc.rv:x}") from None
