"""The direct signing path: pre-hashed input straight to the token, two raw calls, no per-call objects.

Every live OCSP answer pays one signature, so the common case skips the general path of ``signer.py``
(``_with_session``, its closure, ``module.calls()``, python-pkcs11's three calls): a key whose plan is a raw
mechanism without parameters (remembered here as its ``SignMechanism``), a pooled session of the current
module generation that found the key already, a module that needs no serialising lock. Then
``cryptoki.sign_into`` writes into the session's ``SignBuffer``. Anything else, and any error, continues on
the general path with the same permit (``HsmSigner.sign_raw`` hands it to ``_sign``): python-pkcs11 signs
again and raises its own exceptions, which drive the recovery (lost session, logout, re-initialisation,
vanished token).

The module's shared lock is released before ``attempt`` returns, whatever happens: the signer gives its permit
back after it, exactly once (``HsmSigner.sign_raw``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pkcs11 import exceptions as p11e

from directory.hsm import capabilities
from directory.hsm.algorithms import SignatureAlgorithm
from directory.hsm.capabilities import Plan
from directory.hsm.cryptoki import CryptokiError, SignMechanism

if TYPE_CHECKING:
    from directory.hsm.module import Module
    from directory.hsm.sessions import PooledSession

# Raw return codes (``cryptoki``) that mean the same as python-pkcs11's exceptions: a lost session or token,
# recovered like them by the signer.
LOST: dict[int, type[Exception]] = {
    0xB3: p11e.SessionHandleInvalid, 0xB0: p11e.SessionClosed, 0x101: p11e.UserNotLoggedIn,
    0x82: p11e.ObjectHandleInvalid, 0x60: p11e.KeyHandleInvalid, 0x32: p11e.DeviceRemoved, 0x30: p11e.DeviceError,
    0xE0: p11e.TokenNotPresent, 0x5: p11e.GeneralError,
}
SESSION_WAIT = 60.0  # a caller waits this long at most for a free session


class DirectPath:
    """Which (label, algorithm) sign straight to the token, and the two raw calls on a pooled session.

    Knows the module and nothing of the signer: taking a permit, giving it back, falling back to the general
    path and counting stay in ``HsmSigner.sign_raw`` (so no reference cycle either: a signer let go is freed at
    once, its sessions with it)."""

    def __init__(self, module: Module) -> None:
        self._module = module
        # (label, algorithm) whose plan is a raw mechanism without parameters -> its CK_MECHANISM
        self._mechanisms: dict[tuple[str, str], SignMechanism] = {}

    def learn(self, label: str, algorithm: SignatureAlgorithm, plan: Plan) -> None:
        """A plan just made: remembered here when the token can sign its input with two raw calls."""
        if not plan.token_hashes and capabilities.call_arguments(plan.mechanism, algorithm)[1] is None:
            self._mechanisms[label, algorithm.name] = self._module.raw.mechanism(plan.mechanism)

    def forget(self, label: str, algorithm: SignatureAlgorithm) -> None:
        """The module refused the plan: forgotten first (``mechanism`` is read first)."""
        self._mechanisms.pop((label, algorithm.name), None)

    def mechanism(self, label: str, algorithm: SignatureAlgorithm) -> SignMechanism | None:
        """The CK_MECHANISM to sign with straight to the token, or None (no plan yet, or not a raw one)."""
        return self._mechanisms.get((label, algorithm.name))

    def attempt(self, entry: PooledSession | None, label: str, mechanism: SignMechanism,
                token_input: bytes) -> bytes | None:
        """The signature by the two raw calls on ``entry``'s session, or None: no session (``entry`` None), the key
        not found on it yet, a session of an older module generation, a module that must be serialised, or any
        Cryptoki error (the general path signs again and its exceptions drive the recovery)."""
        key = entry.keys.get(label) if entry is not None else None
        if entry is None or key is None:
            return None
        module = self._module
        module.lock.acquire_shared()
        try:
            if entry.generation != module.generation or module.serial_reason is not None:
                return None
            return module.raw.sign_into(entry.handle, key.handle, mechanism, token_input, entry.buffer)
        except CryptokiError:
            return None
        finally:
            module.lock.release_shared()
