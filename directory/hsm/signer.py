"""PKCS#11 signer: issuer keys stay in the token, Python only ever sees digests (or data) and signatures.

Design:
- one module instance per library path, initialised once with ``CKF_OS_LOCKING_OK`` (``module.py``), or
  behind one process-wide lock when the module cannot lock or the configuration says ``serialize``;
- a pool of logged-in sessions (``sessions.py``), at most ``max_concurrent`` and never more than the
  token's own session limit; an executor of that size for asyncio callers;
- the mechanism for each key chosen from what the module offers and the key allows
  (``capabilities.py``), read at start by ``inspect`` and otherwise at the key's first signature;
- recovery without restart: a lost session or login is re-opened at once; a vanished token is looked up
  again at each attempt, and as a last resort (rate-limited) the module is initialised again with the
  same arguments; callers get ``HsmUnavailable`` until it is back;
- a refused PIN is not retried in a loop (tokens lock PINs after a few failures): it backs off;
- the common raw-mechanism signature goes straight to the token (``direct.py``), falling back to the
  general path here on anything unusual.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pkcs11
from cryptography import x509
from pkcs11 import exceptions as p11e

from directory.hsm import capabilities, inventory
from directory.hsm.algorithms import SignatureAlgorithm
from directory.hsm.availability import Availability
from directory.hsm.capabilities import KeyReport, Plan, TokenReport
from directory.hsm.cryptoki import CryptokiError, MechanismInfo
from directory.hsm.direct import LOST, SESSION_WAIT, DirectPath
from directory.hsm.errors import (
    HsmError,
    HsmUnavailable,
    KeyNotFound,
    KeyUnusable,
    PinRefused,
    SignatureCheckFailed,
)
from directory.hsm.keys import EVERY_SIGNATURE, SAMPLED, ChunkSource, KeySigner, Verification, ecdsa_der
from directory.hsm.module import Module
from directory.hsm.pin import PinGuard
from directory.hsm.sessions import PooledSession, SessionPool
from directory.hsm.settings import HsmSettings, HsmStats

__all__ = ["EVERY_SIGNATURE", "SAMPLED", "HsmError", "HsmSettings", "HsmSigner", "HsmStats", "HsmUnavailable",
           "KeyNotFound", "KeySigner", "KeyUnusable", "PinRefused", "SignatureCheckFailed", "Verification",
           "ecdsa_der"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors after which a fresh session can succeed.
_SESSION_ERRORS: tuple[type[Exception], ...] = (
    p11e.SessionHandleInvalid, p11e.SessionClosed, p11e.UserNotLoggedIn, p11e.ObjectHandleInvalid,
    p11e.KeyHandleInvalid, p11e.OperationActive, p11e.FunctionFailed,
)
# Errors that say the token or the device went away: a fresh session, then maybe a re-initialisation.
_DEVICE_ERRORS: tuple[type[Exception], ...] = (
    p11e.DeviceRemoved, p11e.DeviceError, p11e.TokenNotPresent, p11e.TokenNotRecognised, p11e.GeneralError,
    p11e.NoSuchToken, p11e.SlotIDInvalid,
)
# The module refuses the mechanism itself: a configuration problem, retrying does not help.
_MECHANISM_ERRORS: tuple[type[Exception], ...] = (
    p11e.MechanismInvalid, p11e.MechanismParamInvalid, p11e.KeyTypeInconsistent, p11e.FunctionNotSupported,
    p11e.KeySizeRange, p11e.DataLenRange,
)
_CAPABILITY_PROBE = b"annuaire: can this key sign as configured?"


class _Retry(Exception):
    def __init__(self, cause: Exception, device: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.device = device


class _TokenMissing(HsmUnavailable):
    """The token label is not among the module's tokens (now)."""


class HsmSigner:
    """Signs digests with private keys found by label on one token."""

    def __init__(self, settings: HsmSettings) -> None:
        self.settings = settings
        self._pin = PinGuard(settings.pin, settings.pin_reader, settings.token_label, settings.pin_source,
                             settings.pin_rereadable)
        self.availability = Availability(settings.token_label)
        self._module = Module.get(settings.module, settings.softhsm2_conf, settings.serialize)
        size = 1 if self._module.serial_reason else settings.max_concurrent
        self._pool = SessionPool(size)
        self._sized = False
        self._executor = ThreadPoolExecutor(settings.max_concurrent, thread_name_prefix="hsm")
        self._known_labels: set[str] = set()
        self._plans: dict[tuple[str, str], Plan] = {}
        self._direct = DirectPath(self._module)  # the common case of ``sign_raw``
        self._offered: tuple[int, dict[int, MechanismInfo]] | None = None
        self.stats = HsmStats()
        self.on_signature: Callable[[float], None] | None = None  # seconds per signature (metrics)

    # -- sessions --------------------------------------------------------------------------
    def _find_token(self) -> Any:
        try:
            return self._module.lib.get_token(token_label=self.settings.token_label)
        except p11e.PKCS11Error as exc:  # NoSuchToken, or GeneralError when the token files vanished
            label = self.settings.token_label
            held = inventory.tokens_held(self._module.lib)
            raise _TokenMissing(f"token {label!r} not found ({type(exc).__name__}); {held}") from exc

    def _open_session(self) -> PooledSession:
        self._pin.check()
        token = self._find_token()
        try:
            session = token.open()
        except p11e.SessionCount:
            raise HsmUnavailable(f"token {self.settings.token_label!r} refused another session "
                                 f"(CKR_SESSION_COUNT): lower max_concurrent") from None
        try:
            self._pin.login(self._module.raw, session.handle)
        except HsmError:
            with contextlib.suppress(Exception):
                session.close()
            raise
        self.stats.relogins += 1
        entry = PooledSession(self._module.generation, session, token.slot.slot_id)
        if not self._sized:
            self._size_pool(entry)
        return entry

    def _size_pool(self, entry: PooledSession) -> tuple[int, str]:
        """Keep no more sessions than the token allows (read once, with the first session)."""
        try:
            info = self._module.raw.token_info(entry.slot_id)
        except CryptokiError as exc:
            return self._pool.size, f"token information unreadable: {exc}"
        size, reason = capabilities.session_budget(self.settings.max_concurrent, info,
                                                   self._module.serial_reason is not None)
        self._sized = True
        if size < self._pool.size:
            log.warning("HSM token %s: %s", self.settings.token_label, reason)
        for dropped in self._pool.resize(size):
            self._close(dropped)
        return size, reason

    def _close(self, entry: PooledSession | None) -> None:
        if entry is not None and entry.generation == self._module.generation:  # older handles may be reused
            with contextlib.suppress(Exception):
                entry.session.close()

    def _key(self, entry: PooledSession, label: str) -> Any:
        key = entry.keys.get(label)
        if key is None:
            try:
                key = entry.session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=label)
            except p11e.NoSuchKey:
                if label in self._known_labels:
                    # It was there before: the token's contents went away under an open session (token
                    # removed, files gone). Recover like a lost token.
                    raise p11e.DeviceRemoved() from None
                raise KeyNotFound(f"no private key labelled {label!r} on token {self.settings.token_label!r}; "
                                  + inventory.keys_held(entry.session, self.settings.token_label)) from None
            except p11e.MultipleObjectsReturned:
                raise KeyNotFound(f"several private keys labelled {label!r} on token "
                                  f"{self.settings.token_label!r}") from None
            entry.keys[label] = key
            self._known_labels.add(label)
        return key

    def _with_session(self, action: Callable[[PooledSession], T], permit: PooledSession | bool | None = False) -> T:
        """Run ``action`` on a pooled session, recovering from lost sessions and tokens.

        ``permit``: a permit the caller took from the pool already (its session, or None), given back here.
        """
        last: Exception | None = None
        module = self._module
        entry = self._pool.take(SESSION_WAIT) if permit is False else permit
        try:
            for attempt in range(3):
                device = False
                try:
                    with module.calls():
                        if entry is not None and entry.generation != module.generation:
                            entry = None  # abandoned by a re-initialisation: its handle may be someone else's now
                        if entry is None:
                            entry = self._open_session()
                        try:
                            result = action(entry)
                        except _SESSION_ERRORS + _DEVICE_ERRORS as exc:
                            self._close(entry)
                            entry = None
                            raise _Retry(exc, isinstance(exc, _DEVICE_ERRORS)) from exc
                    self.availability.up()
                    return result
                except _Retry as retry:
                    last, device = retry.cause, retry.device
                except PinRefused as exc:
                    last = exc
                    self.stats.errors += 1
                    break
                except HsmUnavailable as exc:
                    last, device = exc, isinstance(exc, _TokenMissing)
                self.stats.errors += 1
                log.debug("HSM attempt %d failed: %s", attempt + 1, _describe(last))
                if attempt >= 1 and device:  # a fresh session did not help either: the token itself is gone
                    try:
                        if module.reinitialize():
                            self.stats.reinits += 1
                    except HsmUnavailable as exc:
                        last = exc
        finally:
            self._give(entry)
        if not isinstance(last, HsmUnavailable):
            last = HsmUnavailable(f"token {self.settings.token_label!r} unavailable: {_describe(last)}")
        self.availability.down(str(last))
        raise last

    # -- capabilities ----------------------------------------------------------------------
    def _mechanisms(self, entry: PooledSession) -> dict[int, MechanismInfo]:
        cached = self._offered
        if cached is not None and cached[0] == self._module.generation:
            return cached[1]
        try:
            offered = self._module.raw.mechanisms(entry.slot_id)
        except CryptokiError as exc:
            raise HsmUnavailable(f"cannot list the token's mechanisms: {exc}") from None
        self._offered = (self._module.generation, offered)
        return offered

    def plan(self, label: str, algorithm: SignatureAlgorithm) -> Plan:
        """The mechanism key ``label`` signs ``algorithm`` with (read from the token once, then remembered)."""
        plan = self._plans.get((label, algorithm.name))
        if plan is not None:
            return plan

        def action(entry: PooledSession) -> Plan:
            key = self._key(entry, label)
            try:
                allowed = self._module.raw.allowed_mechanisms(entry.session.handle, key.handle)
            except CryptokiError as exc:
                lost = LOST.get(exc.rv)
                if lost is not None:  # the session (or the token) went away: recovered as python-pkcs11's errors
                    raise lost() from None
                raise HsmUnavailable(f"cannot read key {label!r}: {exc}") from None
            facts = capabilities.key_facts(key, allowed)
            return capabilities.choose(label, algorithm, facts, self._mechanisms(entry))

        plan = self._with_session(action)
        self._plans[label, algorithm.name] = plan
        self._direct.learn(label, algorithm, plan)
        return plan

    def inspect(self, keys: Iterable[KeySigner]) -> TokenReport:
        """Read the module, the token and each key; choose mechanisms, size the pool, sign once with each key.

        Raises ``HsmUnavailable`` when the token cannot be reached; a key that cannot be used is reported
        (``TokenReport.unusable``), not raised.
        """
        def action(entry: PooledSession) -> tuple[Any, dict[int, MechanismInfo], tuple[int, str]]:
            return self._module.raw.token_info(entry.slot_id), self._mechanisms(entry), self._size_pool(entry)

        info, offered, (sessions, reason) = self._with_session(action)
        lib = self._module.lib
        report = TokenReport(self.settings.module, f"{lib.manufacturer_id} {lib.library_description} "
                             f"{'.'.join(map(str, lib.library_version))}", info, self._module.locking, sessions,
                             reason)
        for key in keys:
            entry = KeyReport(key.label, key.description, key.algorithm.name)
            report.keys.append(entry)
            try:
                entry.plan = self.plan(key.label, key.algorithm)
                entry.warning = capabilities.size_warning(entry.plan, offered, key.bits)
                key.sign(_CAPABILITY_PROBE)  # the module may advertise what it then refuses; proves key = certificate
            except KeyNotFound as exc:
                entry.problem, entry.missing = str(exc), True
            except (KeyUnusable, SignatureCheckFailed) as exc:
                entry.problem = str(exc)
        return report

    # -- signing ---------------------------------------------------------------------------
    def _sign(self, label: str, algorithm: SignatureAlgorithm, plan: Plan, data: Callable[[], Any],
              token_input: bytes | None = None, permit: PooledSession | bool | None = False,
              started: float | None = None) -> bytes:
        mechanism, param = capabilities.call_arguments(plan.mechanism, algorithm)
        direct = token_input is not None and param is None

        def action(entry: PooledSession) -> bytes:
            key = self._key(entry, label)
            if direct:  # two raw calls (``cryptoki.sign_into``); on any error python-pkcs11 makes them again
                try:  # and raises its own exception, which the recovery below knows
                    return self._module.raw.sign_into(entry.handle, key.handle,
                                                      self._module.raw.mechanism(plan.mechanism),
                                                      token_input, entry.buffer)  # type: ignore[arg-type]
                except CryptokiError:
                    pass
            try:
                return key.sign(data(), mechanism=mechanism, mechanism_param=param)
            except _MECHANISM_ERRORS as exc:
                self._direct.forget(label, algorithm)  # first: ``sign_raw`` reads it first
                self._plans.pop((label, algorithm.name), None)
                raise KeyUnusable(f"key {label!r}: the module refused {plan.describe()} for {algorithm.name}: "
                                  f"{type(exc).__name__}") from None

        if started is None:
            started = time.perf_counter()
        signature = self._with_session(action, permit)
        self._signed(started)
        return signature

    def sign_raw(self, label: str, algorithm: SignatureAlgorithm, token_input: bytes) -> bytes:
        """Sign pre-hashed input (see ``algorithms.py``) with the key's raw mechanism: straight to the token in
        the common case (``direct.py``), else through the general path (``_sign``), with the same permit. The
        permit goes back exactly once, after the module's lock is released."""
        mechanism = self._direct.mechanism(label, algorithm)
        if mechanism is None:
            plan = self.plan(label, algorithm)
            if plan.token_hashes:
                raise KeyUnusable(f"key {label!r}: this module signs only with {plan.describe()}, not a digest")
            return self._sign(label, algorithm, plan, lambda: token_input, token_input)
        started = time.perf_counter()
        entry = self._pool.take(SESSION_WAIT)
        try:
            signature = self._direct.attempt(entry, label, mechanism, token_input)
        except BaseException:
            self._give(entry)  # whatever else went wrong, the permit goes back
            raise
        if signature is None:
            plan = self._plans.get((label, algorithm.name))
            if plan is None:  # refused meanwhile (``_sign``): plan again, without holding a permit
                self._give(entry)
                self._direct.forget(label, algorithm)
                return self.sign_raw(label, algorithm, token_input)
            return self._sign(label, algorithm, plan, lambda: token_input, token_input, entry, started)
        self._give(entry)
        self.availability.up()
        self._signed(started)
        return signature

    def _give(self, entry: PooledSession | None) -> None:
        """Give a permit back; close its session if the pool shrank meanwhile."""
        dropped = self._pool.give(entry)
        if dropped is not None:
            with self._module.calls():
                self._close(dropped)

    def _signed(self, started: float) -> None:
        """Count a signature made, and its time (metrics)."""
        self.stats.signatures += 1
        if self.on_signature is not None:
            self.on_signature(time.perf_counter() - started)

    def sign_data(self, label: str, algorithm: SignatureAlgorithm, source: ChunkSource) -> bytes:
        """Sign the bytes ``source`` gives with a mechanism that hashes in the token (streamed in parts)."""
        plan = self.plan(label, algorithm)

        def data() -> Any:
            chunks = source()
            if isinstance(chunks, tuple) and len(chunks) == 1:
                return chunks[0]  # one part: C_Sign
            return iter(chunks)  # C_SignUpdate per chunk, then C_SignFinal

        return self._sign(label, algorithm, plan, data)

    @property
    def sessions(self) -> int:
        """How many signatures can run at once (the session pool's size: ``max_concurrent``, or less)."""
        return self._pool.size

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking signer call on the HSM executor (bounded by ``max_concurrent``)."""
        import asyncio  # here: the command line (``crl build``) never needs it, and it costs start-up time

        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def key(self, label: str, certificate: x509.Certificate, algorithm: SignatureAlgorithm | None = None,
            verification: Verification = EVERY_SIGNATURE) -> KeySigner:
        """A signer for the key ``label`` whose public half is in ``certificate``."""
        return KeySigner(self, label, certificate.public_key(), algorithm, certificate.subject.rfc4514_string(),
                         verification)

    def trust_epoch(self) -> tuple[int, int, int, int]:
        """Changes whenever a session is opened (keys looked up again by label), an HSM call fails, or the
        module is initialised again: a key's sampled verification starts over (``keys.Verification``)."""
        stats = self.stats
        return self._module.generation, stats.relogins, stats.errors, stats.reinits

    # -- state -----------------------------------------------------------------------------
    def check(self, labels: Iterable[str] = ()) -> None:
        """Round-trip to the token: raise unless logged in and each key in ``labels`` is there."""
        wanted = list(labels)

        def action(entry: PooledSession) -> None:
            cls = pkcs11.Attribute.CLASS
            for label in wanted or [""]:
                attrs = {cls: pkcs11.ObjectClass.PRIVATE_KEY, pkcs11.Attribute.LABEL: label}
                found = list(entry.session.get_objects(attrs))
                if label and not found and label in self._known_labels:
                    raise p11e.DeviceRemoved()  # it was there: the token went away; recover as in _key
                if label and not found:
                    raise KeyNotFound(f"no private key labelled {label!r} on token {self.settings.token_label!r}; "
                                      + inventory.keys_held(entry.session, self.settings.token_label))
                if label and len(found) != 1:
                    raise KeyNotFound(f"{len(found)} private keys labelled {label!r} on the token")
                if label:
                    self._known_labels.add(label)

        self._with_session(action)

    @contextlib.contextmanager
    def admin_session(self) -> Iterator[Any]:
        """A read-write logged-in session for the demo issuance stub (key generation)."""
        with self._module.calls():
            token = self._find_token()
            session = token.open(rw=True)
            try:
                self._pin.login(self._module.raw, session.handle)
                yield session
            finally:
                with contextlib.suppress(Exception):
                    session.close()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._module.calls():
            for entry in self._pool.drain():
                self._close(entry)

    # test hooks: pull the rug from under the signer the way a real HSM outage would
    def _close_all_sessions_underneath(self) -> None:
        for slot in self._module.lib.get_slots(token_present=False):
            with contextlib.suppress(CryptokiError):
                self._module.raw.close_all_sessions(slot.slot_id)


def _describe(exc: Exception | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
