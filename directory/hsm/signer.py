"""PKCS#11 signer: issuer keys stay in the token, Python only ever sees digests and signatures.

Design:
- one module instance per library path (``_Module``), re-initialised with ``CKF_OS_LOCKING_OK`` so
  that several threads may sign at once (see ``cryptoki.py``);
- one logged-in session per worker thread, opened lazily and re-opened after any session error;
- a bound on concurrent signatures (``max_concurrent``) for every caller, and an executor of that size
  for asyncio callers;
- recovery without restart: a lost session or login is re-opened at once; a vanished token triggers a
  module re-initialisation (rate-limited), and callers get ``HsmUnavailable`` until it is back;
- a refused PIN is not retried in a loop (tokens lock PINs after a few failures): it backs off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import pkcs11
from asn1crypto import algos
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes as PublicKey
from pkcs11 import exceptions as p11e

from directory.hsm.algorithms import SignatureAlgorithm, default_algorithm
from directory.hsm.cryptoki import Cryptoki, CryptokiError

log = logging.getLogger(__name__)
T = TypeVar("T")


class HsmError(Exception):
    """Base class of signer errors; messages never contain the PIN."""


class HsmUnavailable(HsmError):
    """The token cannot be used right now (absent, module failing, PIN refused); retry later."""


class PinRefused(HsmUnavailable):
    """The token refused the PIN; we back off instead of retrying (tokens lock PINs after a few failures)."""


class KeyNotFound(HsmError):
    """No private key with this label on the token (or several)."""


class SignatureCheckFailed(HsmError):
    """The token returned a signature that does not verify under the expected certificate."""


# Errors after which a fresh session (and maybe a fresh module) can succeed.
_SESSION_ERRORS: tuple[type[Exception], ...] = (
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.UserNotLoggedIn,
    p11e.ObjectHandleInvalid,
    p11e.KeyHandleInvalid,
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.OperationActive,
    p11e.GeneralError,
    p11e.FunctionFailed,
    p11e.NoSuchToken,
    p11e.SlotIDInvalid,
)

_REINIT_MIN_INTERVAL = 1.0
_PIN_BACKOFF = 30.0


@dataclass(frozen=True)
class HsmSettings:
    """Where the token is and how to log in. ``pin`` comes from an env var or a file, never from config."""

    module: str
    token_label: str
    pin: str = field(repr=False)
    max_concurrent: int = 2
    softhsm2_conf: str | None = None
    # where the PIN comes from (file or environment), read again after a refusal: a PIN changed on the
    # token and in its file is picked up without a restart, and a refused PIN is never tried twice
    pin_reader: Callable[[], str] | None = field(default=None, repr=False, compare=False)


class _RWLock:
    """Many signers share the module; a re-initialisation needs it alone. Cheap on the shared path."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False

    def acquire_shared(self) -> None:
        self._mutex.acquire()
        try:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        finally:
            self._mutex.release()

    def release_shared(self) -> None:
        self._mutex.acquire()
        try:
            self._readers -= 1
            if self._readers == 0 and self._writer:
                self._cond.notify_all()
        finally:
            self._mutex.release()

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._writer = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _Module:
    """One loaded PKCS#11 library, shared by every signer of the process."""

    _instances: ClassVar[dict[str, _Module]] = {}
    _instances_lock = threading.Lock()

    def __init__(self, path: str) -> None:
        self.path = path
        self.lib = pkcs11.lib(path)
        self.raw = Cryptoki(path)
        self.raw.initialize_with_os_locking()
        self.conf = os.environ.get("SOFTHSM2_CONF")
        self.generation = 0
        self.lock = _RWLock()
        self._last_reinit = 0.0
        self._reinit_mutex = threading.Lock()

    @classmethod
    def get(cls, path: str, softhsm2_conf: str | None) -> _Module:
        with cls._instances_lock:
            if softhsm2_conf is not None:
                os.environ["SOFTHSM2_CONF"] = softhsm2_conf
            module = cls._instances.get(path)
            if module is None:
                try:
                    module = cls(path)
                except (OSError, p11e.PKCS11Error, CryptokiError) as exc:
                    raise HsmUnavailable(f"cannot load PKCS#11 module {path}: {exc}") from exc
                cls._instances[path] = module
            elif softhsm2_conf is not None and module.conf != softhsm2_conf:
                module.reinitialize(force=True)
            return module

    def reinitialize(self, force: bool = False) -> bool:
        """Finalize and initialise again so that removed/returned tokens are seen. Rate-limited."""
        with self._reinit_mutex:
            if not force and time.monotonic() - self._last_reinit < _REINIT_MIN_INTERVAL:
                return False
            with self.lock.exclusive():
                try:
                    self.raw.initialize_with_os_locking()
                except CryptokiError as exc:
                    log.error("PKCS#11 module re-initialisation failed: %s", exc)
                    raise HsmUnavailable(f"PKCS#11 module re-initialisation failed: {exc}") from exc
                finally:
                    self._last_reinit = time.monotonic()
                self.conf = os.environ.get("SOFTHSM2_CONF")
                self.generation += 1
            log.warning("PKCS#11 module re-initialised (generation %d)", self.generation)
            return True


@dataclass
class _ThreadSession:
    generation: int
    session: Any
    keys: dict[str, Any] = field(default_factory=dict)


@dataclass
class HsmStats:
    """Counters exported as metrics later on."""

    signatures: int = 0
    errors: int = 0
    relogins: int = 0
    reinits: int = 0


class HsmSigner:
    """Signs digests with private keys found by label on one token."""

    def __init__(self, settings: HsmSettings) -> None:
        self.settings = settings
        self._pin = settings.pin.encode()
        self._module = _Module.get(settings.module, settings.softhsm2_conf)
        self._local = threading.local()
        self._open: set[Any] = set()
        self._open_lock = threading.Lock()
        # Bound on concurrent signatures for every caller; a C-level queue of permits is the cheapest gate.
        self._permits: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(settings.max_concurrent):
            self._permits.put(None)
        self._executor = ThreadPoolExecutor(settings.max_concurrent, thread_name_prefix="hsm")
        self._pin_refused_until = 0.0
        self._refused_pin: bytes | None = None
        self._last_error: str | None = None
        self._known_labels: set[str] = set()
        self.stats = HsmStats()
        self.on_signature: Callable[[float], None] | None = None  # seconds per signature (metrics)

    # -- sessions --------------------------------------------------------------------------
    def _find_token(self) -> Any:
        try:
            return self._module.lib.get_token(token_label=self.settings.token_label)
        except p11e.PKCS11Error as exc:  # NoSuchToken, or GeneralError when the token files vanished
            label = self.settings.token_label
            raise HsmUnavailable(f"token {label!r} not found: {type(exc).__name__}") from exc

    def _thread_session(self) -> _ThreadSession:
        entry: _ThreadSession | None = getattr(self._local, "entry", None)
        if entry is not None and entry.generation == self._module.generation:
            return entry
        if entry is not None:
            self._forget(entry)
        if self._refused_pin is not None and self.settings.pin_reader is not None:
            try:
                fresh = self.settings.pin_reader().encode()
            except (OSError, KeyError):
                fresh = self._refused_pin
            if fresh == self._refused_pin:  # a wrong PIN tried again and again locks a real HSM's user PIN
                raise PinRefused("PIN refused by the token; not trying the same PIN again: correct the PIN "
                                 "file or variable (it is read again at the next attempt)")
            self._pin, self._refused_pin, self._pin_refused_until = fresh, None, 0.0
        if time.monotonic() < self._pin_refused_until:
            raise PinRefused("PIN refused by the token; backing off before trying again")
        token = self._find_token()
        session = token.open()
        try:
            self._module.raw.login(session.handle, self._pin)
        except CryptokiError as exc:
            with contextlib.suppress(Exception):
                session.close()
            if exc.rv in (0xA0, 0xA4):  # CKR_PIN_INCORRECT, CKR_PIN_LOCKED
                self._pin_refused_until = time.monotonic() + _PIN_BACKOFF
                self._refused_pin = self._pin
                log.error("HSM: the token %s refused the user PIN; signing stops until it is corrected",
                          self.settings.token_label)
                raise PinRefused("PIN refused by the token") from None
            raise HsmUnavailable(f"login failed: CKR 0x{exc.rv:x}") from None
        entry = _ThreadSession(self._module.generation, session)
        self._local.entry = entry
        with self._open_lock:
            self._open.add(session)
        self.stats.relogins += 1
        return entry

    def _forget(self, entry: _ThreadSession) -> None:
        self._local.entry = None
        with self._open_lock:
            self._open.discard(entry.session)
        with contextlib.suppress(Exception):
            entry.session.close()

    def _drop_thread_session(self) -> None:
        entry = getattr(self._local, "entry", None)
        if entry is not None:
            self._forget(entry)

    def _key(self, entry: _ThreadSession, label: str) -> Any:
        key = entry.keys.get(label)
        if key is None:
            try:
                key = entry.session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=label)
            except p11e.NoSuchKey:
                if label in self._known_labels:
                    # It was there before: the token's contents went away under an open session (token
                    # removed, files gone). Recover like a lost session: reopen, then re-initialise.
                    raise p11e.DeviceRemoved() from None
                raise KeyNotFound(f"no private key labelled {label!r} on token "
                                  f"{self.settings.token_label!r}") from None
            except p11e.MultipleObjectsReturned:
                raise KeyNotFound(f"several private keys labelled {label!r} on token "
                                  f"{self.settings.token_label!r}") from None
            entry.keys[label] = key
            self._known_labels.add(label)
        return key

    def _with_session(self, action: Callable[[_ThreadSession], T]) -> T:
        """Run ``action`` on this thread's session, recovering from lost sessions and tokens."""
        last: Exception | None = None
        self._permits.get()
        try:
            lock = self._module.lock
            for attempt in range(3):
                try:
                    lock.acquire_shared()
                    try:
                        result = action(self._thread_session())
                    except _SESSION_ERRORS as exc:
                        self._drop_thread_session()
                        raise _Retry(exc) from exc
                    finally:
                        lock.release_shared()
                    if self._last_error is not None:
                        self._last_error = None
                    return result
                except _Retry as retry:
                    last = retry.cause
                except PinRefused as exc:
                    last = exc
                    self.stats.errors += 1
                    break
                except HsmUnavailable as exc:
                    last = exc
                self.stats.errors += 1
                if attempt >= 1:
                    try:
                        if self._module.reinitialize():
                            self.stats.reinits += 1
                    except HsmUnavailable as exc:
                        last = exc
        finally:
            self._permits.put(None)
        self._last_error = _describe(last)
        if isinstance(last, HsmUnavailable):
            raise last
        raise HsmUnavailable(f"token {self.settings.token_label!r} unavailable: {_describe(last)}") from last

    # -- signing ---------------------------------------------------------------------------
    def sign_raw(self, label: str, algorithm: SignatureAlgorithm, token_input: bytes) -> bytes:
        """Sign pre-hashed input with the raw mechanism for ``algorithm`` (see ``algorithms.py``)."""
        if algorithm.scheme == "pkcs1":
            mech, param = pkcs11.Mechanism.RSA_PKCS, None
        elif algorithm.scheme == "pss":
            hash_mech = getattr(pkcs11.Mechanism, algorithm.hash.upper())
            mgf = getattr(pkcs11.MGF, algorithm.hash.upper())
            mech, param = pkcs11.Mechanism.RSA_PKCS_PSS, (hash_mech, mgf, algorithm.digest_size)
        else:
            mech, param = pkcs11.Mechanism.ECDSA, None

        def action(entry: _ThreadSession) -> bytes:
            return self._key(entry, label).sign(token_input, mechanism=mech, mechanism_param=param)

        started = time.perf_counter()
        signature = self._with_session(action)
        self.stats.signatures += 1
        if self.on_signature is not None:
            self.on_signature(time.perf_counter() - started)
        return signature

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking signer call on the HSM executor (bounded by ``max_concurrent``)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def key(self, label: str, certificate: x509.Certificate,
            algorithm: SignatureAlgorithm | None = None) -> KeySigner:
        """A signer for the key ``label`` whose public half is in ``certificate``."""
        return KeySigner(self, label, certificate.public_key(), algorithm, certificate.subject.rfc4514_string())

    # -- state -----------------------------------------------------------------------------
    def check(self, labels: Iterable[str] = ()) -> None:
        """Round-trip to the token: raise unless logged in and each key in ``labels`` is there."""
        wanted = list(labels)

        def action(entry: _ThreadSession) -> None:
            cls = pkcs11.Attribute.CLASS
            for label in wanted or [""]:
                attrs = {cls: pkcs11.ObjectClass.PRIVATE_KEY, pkcs11.Attribute.LABEL: label}
                found = list(entry.session.get_objects(attrs))
                if label and not found and label in self._known_labels:
                    raise p11e.DeviceRemoved()  # it was there: the token went away; recover as in _key
                if label and len(found) != 1:
                    raise KeyNotFound(f"{len(found)} private keys labelled {label!r} on the token")
                if label:
                    self._known_labels.add(label)

        self._with_session(action)

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @contextlib.contextmanager
    def admin_session(self) -> Iterator[Any]:
        """A read-write logged-in session for the demo issuance stub (key generation)."""
        with self._module.lock.shared():
            token = self._find_token()
            session = token.open(rw=True)
            try:
                self._module.raw.login(session.handle, self._pin)
                yield session
            finally:
                with contextlib.suppress(Exception):
                    session.close()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._open_lock:
            sessions, self._open = self._open, set()
        for session in sessions:
            with contextlib.suppress(Exception):
                session.close()

    # test hooks: pull the rug from under the signer the way a real HSM outage would
    def _close_all_sessions_underneath(self) -> None:
        for slot in self._module.lib.get_slots(token_present=False):
            with contextlib.suppress(CryptokiError):
                self._module.raw.close_all_sessions(slot.slot_id)


class _Retry(Exception):
    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _describe(exc: Exception | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class KeySigner:
    """One issuer key: hashes on the host, signs in the token, verifies before returning."""

    def __init__(self, hsm: HsmSigner, label: str, public_key: PublicKey, algorithm: SignatureAlgorithm | None,
                 holder: str) -> None:
        if isinstance(public_key, rsa.RSAPublicKey):
            kind, size = "rsa", public_key.key_size
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            kind, size = "ec", public_key.curve.key_size
        else:
            raise HsmError(f"key {label!r}: unsupported public key type {type(public_key).__name__}")
        algorithm = algorithm or default_algorithm(kind, size)
        if algorithm.key_kind != kind:
            raise HsmError(f"key {label!r}: algorithm {algorithm.name} does not fit a {kind} key")
        self.hsm = hsm
        self.label = label
        self.holder = holder
        self.public_key = public_key
        self.algorithm = algorithm
        self.algorithm_identifier: algos.SignedDigestAlgorithm = algorithm.algorithm_identifier()
        self.algorithm_identifier_der: bytes = self.algorithm_identifier.dump()
        self._curve_bytes = (size + 7) // 8 if kind == "ec" else 0

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a digest made with ``self.algorithm.hash``; returns the X.509 signature value."""
        raw = self.hsm.sign_raw(self.label, self.algorithm, self.algorithm.token_input(digest))
        if self.algorithm.scheme == "ecdsa":
            if len(raw) != 2 * self._curve_bytes:
                raise SignatureCheckFailed(f"key {self.label!r}: token returned {len(raw)} bytes for ECDSA")
            signature = ecdsa_der(raw)
        else:
            signature = raw
        self.verify_digest(signature, digest)
        return signature

    def sign(self, data: bytes | Iterable[bytes]) -> bytes:
        """Hash ``data`` (or a stream of chunks) on the host, then sign the digest."""
        return self.sign_digest(self.algorithm.digest(data))

    async def sign_async(self, data: bytes) -> bytes:
        return await self.hsm.run(self.sign, data)

    def verify_digest(self, signature: bytes, digest: bytes) -> None:
        """Raise ``SignatureCheckFailed`` unless ``signature`` over ``digest`` verifies under our public key."""
        prehashed = utils.Prehashed(self.algorithm.cryptography_hash())
        try:
            if self.algorithm.scheme == "ecdsa":
                self.public_key.verify(signature, digest, ec.ECDSA(prehashed))  # type: ignore[call-arg]
            elif self.algorithm.scheme == "pkcs1":
                self.public_key.verify(signature, digest, padding.PKCS1v15(), prehashed)  # type: ignore[call-arg]
            else:
                mgf = padding.MGF1(self.algorithm.cryptography_hash())
                pss = padding.PSS(mgf, self.algorithm.digest_size)
                self.public_key.verify(signature, digest, pss, prehashed)  # type: ignore[call-arg]
        except InvalidSignature:
            raise SignatureCheckFailed(
                f"key {self.label!r}: signature does not verify under the public key of {self.holder} "
                "(wrong key label or certificate?)"
            ) from None


def _der_int(value: bytes) -> bytes:
    value = value.lstrip(b"\x00") or b"\x00"
    if value[0] & 0x80:
        value = b"\x00" + value
    return b"\x02" + _der_len(len(value)) + value


def _der_len(n: int) -> bytes:
    return bytes([n]) if n < 0x80 else bytes([0x81, n]) if n < 0x100 else bytes([0x82, n >> 8, n & 0xFF])


def ecdsa_der(raw: bytes) -> bytes:
    """PKCS#11 raw r||s to DER Ecdsa-Sig-Value (the form X.509 and OCSP carry)."""
    half = len(raw) // 2
    body = _der_int(raw[:half]) + _der_int(raw[half:])
    return b"\x30" + _der_len(len(body)) + body
