"""The direct signing path: pre-hashed input straight to the token, two raw calls, no per-call objects.

Every live OCSP answer pays one signature, so the common case skips the general path of ``signer.py``
(``_with_session``, its closure, ``module.calls()``, python-pkcs11's three calls): a key whose plan is a raw
mechanism without parameters (remembered here as its ``SignMechanism``), a pooled session of the current
module generation that found the key already, a module that needs no serialising lock. Then
``cryptoki.sign_into`` writes into the session's ``SignBuffer``. Anything else, and any error, continues on
the general path with the same permit (``HsmSigner._sign``): python-pkcs11 signs again and raises its own
exceptions, which drive the recovery (lost session, logout, re-initialisation, vanished token).

Whatever happens, the permit taken from the pool goes back exactly once, after the module's lock is released.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pkcs11 import exceptions as p11e

from directory.hsm import capabilities
from directory.hsm.algorithms import SignatureAlgorithm
from directory.hsm.capabilities import Plan
from directory.hsm.cryptoki import CryptokiError, SignMechanism
from directory.hsm.errors import KeyUnusable

if TYPE_CHECKING:
    from directory.hsm.module import Module
    from directory.hsm.signer import HsmSigner

# Raw return codes (``cryptoki``) that mean the same as python-pkcs11's exceptions: a lost session or token,
# recovered like them by the signer.
LOST: dict[int, type[Exception]] = {
    0xB3: p11e.SessionHandleInvalid, 0xB0: p11e.SessionClosed, 0x101: p11e.UserNotLoggedIn,
    0x82: p11e.ObjectHandleInvalid, 0x60: p11e.KeyHandleInvalid, 0x32: p11e.DeviceRemoved, 0x30: p11e.DeviceError,
    0xE0: p11e.TokenNotPresent, 0x5: p11e.GeneralError,
}
SESSION_WAIT = 60.0  # a caller waits this long at most for a free session


class DirectPath:
    """One signer's direct path: which (label, algorithm) sign straight to the token, and the signing itself.

    Part of ``HsmSigner`` kept apart: ``sign`` is handed the signer (its pool, module and general path) at each
    call rather than keeping it, so that a signer and its direct path make no reference cycle (a signer let go
    is freed at once, its sessions with it, not at some later garbage collection)."""

    def __init__(self, module: Module) -> None:
        self._module = module
        # (label, algorithm) whose plan is a raw mechanism without parameters -> its CK_MECHANISM
        self._mechanisms: dict[tuple[str, str], SignMechanism] = {}

    def learn(self, label: str, algorithm: SignatureAlgorithm, plan: Plan) -> None:
        """A plan just made: remembered here when the token can sign its input with two raw calls."""
        if not plan.token_hashes and capabilities.call_arguments(plan.mechanism, algorithm)[1] is None:
            self._mechanisms[label, algorithm.name] = self._module.raw.mechanism(plan.mechanism)

    def forget(self, label: str, algorithm: SignatureAlgorithm) -> None:
        """The module refused the plan: forgotten first (``sign`` reads it first)."""
        self._mechanisms.pop((label, algorithm.name), None)

    def sign(self, signer: HsmSigner, label: str, algorithm: SignatureAlgorithm, token_input: bytes) -> bytes:
        """``signer.sign_raw``: straight to the token when it can, else through the signer's general path."""
        mechanism = self._mechanisms.get((label, algorithm.name))
        if mechanism is None:
            plan = signer.plan(label, algorithm)
            if plan.token_hashes:
                raise KeyUnusable(f"key {label!r}: this module signs only with {plan.describe()}, not a digest")
            return signer._sign(label, algorithm, plan, lambda: token_input, token_input)
        started = time.perf_counter()
        pool, module = signer._pool, signer._module
        entry = pool.take(SESSION_WAIT)
        key = entry.keys.get(label) if entry is not None else None
        try:
            if entry is not None and key is not None:  # (a key only comes with a session: ``entry`` for the types)
                module.lock.acquire_shared()
                try:
                    if entry.generation == module.generation and module.serial_reason is None:
                        signature = module.raw.sign_into(entry.handle, key.handle, mechanism, token_input,
                                                         entry.buffer)
                    else:
                        key = None
                except CryptokiError:
                    key = None
                finally:
                    module.lock.release_shared()
        except BaseException:
            signer._give(entry)  # whatever else went wrong, the permit goes back (the module's lock released first)
            raise
        if key is None:
            plan = signer._plans.get((label, algorithm.name))
            if plan is None:  # refused meanwhile (``_sign``): plan again, without holding a permit
                signer._give(entry)
                self.forget(label, algorithm)
                return self.sign(signer, label, algorithm, token_input)
            return signer._sign(label, algorithm, plan, lambda: token_input, token_input, entry, started)
        signer._give(entry)
        signer.availability.up()
        signer._signed(started)
        return signature
