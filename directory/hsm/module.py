"""Loading a PKCS#11 module and initialising it once, the right way.

The first ``C_Initialize`` of the process carries ``CKF_OS_LOCKING_OK``: a module initialised with
``NULL`` may assume a single-threaded application and skip its own locking, and some modules
(tpm2-pkcs11) keep the locking mode of their first initialisation even after ``C_Finalize``, so the flag
must be right the first time. python-pkcs11 would call ``C_Initialize(NULL)``: we make the call
ourselves through ctypes first and hand python-pkcs11 a library object that skips its own.

A module answering ``CKR_CANT_LOCK`` (or one that somebody else in the process initialised first, with
flags we cannot know), or a configuration with ``serialize = true``, gets one process-wide lock around
every call to it instead.

A re-initialisation (last resort when a token vanished: SoftHSM2 only sees a returned token that way)
repeats exactly the first call's arguments, so nothing depends on a module resetting itself on
``C_Finalize``; lost sessions and logins are recovered without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pkcs11
from pkcs11 import _pkcs11
from pkcs11 import exceptions as p11e

from directory.hsm.cryptoki import (
    CKR_CANT_LOCK,
    CKR_CRYPTOKI_ALREADY_INITIALIZED,
    CKR_OK,
    Cryptoki,
    CryptokiError,
)
from directory.hsm.errors import HsmUnavailable

log = logging.getLogger(__name__)

_REINIT_MIN_INTERVAL = 1.0


class _InitialisedLib(_pkcs11.lib):  # type: ignore[misc]
    """python-pkcs11's library object without its ``C_Initialize(NULL)``: the module is initialised already.

    ``initialize`` is a cpdef method, so python-pkcs11's constructor calls this override. ``initialized``
    stays false, so python-pkcs11 never calls ``C_Finalize`` either (not even when the object is freed).
    """

    def initialize(self) -> None:
        return None


class _RWLock:
    """Many callers share the module; a re-initialisation needs it alone. Cheap on the shared path (the
    mutex's own C context manager, not the Condition's Python one: this runs around every signature)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False

    def acquire_shared(self) -> None:
        with self._mutex:
            while self._writer:
                self._cond.wait()
            self._readers += 1

    def release_shared(self) -> None:
        with self._mutex:
            self._readers -= 1
            if self._readers == 0 and self._writer:
                self._cond.notify_all()

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


IN_PROCESS_MODULES = ("SoftHSM",)  # manufacturerID prefixes of modules that sign in this process, on the CPU


def computes_in_process(manufacturer_id: str) -> bool:
    """Whether a module's signing calls compute here and wait on nothing outside the process (no network, no
    device): only then may ``cryptoki.Quick`` make them with the GIL held. An HSM over a network, a TPM, a
    smart card may stall; their calls always release the GIL."""
    return manufacturer_id.strip().startswith(IN_PROCESS_MODULES)


class Module:
    """One loaded PKCS#11 library, shared by every signer of the process."""

    _instances: ClassVar[dict[str, Module]] = {}
    _instances_lock = threading.Lock()

    def __init__(self, path: str) -> None:
        self.path = path
        self.raw = Cryptoki(path)
        self.serial_reason: str | None = None
        self._serial_lock = threading.RLock()  # re-entrant: an admin session may sign inside
        reason = self._initialize()
        self.os_locking = reason is None
        if reason is not None:
            self._serialize(reason)
        self.lib = _InitialisedLib(path)
        # any later pkcs11.lib(path) in this process gets this object instead of calling C_Initialize(NULL)
        pkcs11._loaded.setdefault(path, self.lib)  # type: ignore[attr-defined]
        self.raw.held_calls = computes_in_process(self.lib.manufacturer_id)
        # The library lives as long as the process: never finalised, never unloaded (and the destructor of a
        # subclass of python-pkcs11's cdef class fails when it runs during interpreter shutdown).
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(self.lib))
        self.conf = os.environ.get("SOFTHSM2_CONF")
        self.generation = 0
        self.lock = _RWLock()
        self._last_reinit = 0.0
        self._reinit_mutex = threading.Lock()

    def _initialize(self) -> str | None:
        """The process's first ``C_Initialize``, with OS locking; why calls must be serialised, if they must."""
        rv = self.raw.initialize(os_locking=True)
        if rv == CKR_OK:
            return None
        if rv == CKR_CANT_LOCK:
            rv = self.raw.initialize(os_locking=False)
            if rv == CKR_OK:
                return "the module cannot use OS locking (CKR_CANT_LOCK)"
        if rv == CKR_CRYPTOKI_ALREADY_INITIALIZED:
            return "other code of this process initialised the module first, with flags we cannot know"
        raise CryptokiError("C_Initialize", rv)

    def _serialize(self, reason: str) -> None:
        if self.serial_reason is None:
            self.serial_reason = reason
            log.warning("PKCS#11 module %s: %s; every call to it goes through one process-wide lock",
                        self.path, reason)

    @property
    def locking(self) -> str:
        """How concurrent calls are made safe, for reports."""
        if self.serial_reason is not None:
            return f"serialised: {self.serial_reason}"
        return "OS locking (CKF_OS_LOCKING_OK)"

    @classmethod
    def get(cls, path: str, softhsm2_conf: str | None, serialize: bool = False) -> Module:
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
                module.reinitialize(force=True)  # SoftHSM2 reads its config file when initialised
        if serialize:
            module._serialize("the configuration says serialize = true")
        return module

    def calls(self) -> _Calls:
        """Around every use of the module: shared with other callers unless serialised; never during a re-init."""
        return _Calls(self)

    def reinitialize(self, force: bool = False) -> bool:
        """Finalize, then initialise with the first call's arguments, so that a returned token is seen.

        Rate-limited; sessions of the previous generation are abandoned (their handles may be reused).
        """
        with self._reinit_mutex:
            if not force and time.monotonic() - self._last_reinit < _REINIT_MIN_INTERVAL:
                return False
            with self.lock.exclusive():
                try:
                    self.raw.finalize()
                    rv = self.raw.initialize(self.os_locking)
                    if rv != CKR_OK:
                        raise CryptokiError("C_Initialize", rv)
                except CryptokiError as exc:
                    log.error("PKCS#11 module re-initialisation failed: %s", exc)
                    raise HsmUnavailable(f"PKCS#11 module re-initialisation failed: {exc}") from exc
                finally:
                    self._last_reinit = time.monotonic()
                self.conf = os.environ.get("SOFTHSM2_CONF")
                self.generation += 1
            log.warning("PKCS#11 module re-initialised (generation %d)", self.generation)
            return True


class _Calls:
    """``Module.calls()``: a plain context manager (no generator), as it wraps every signature."""

    __slots__ = ("_module", "_serial")

    def __init__(self, module: Module) -> None:
        self._module = module
        self._serial: Any = None  # the serialising RLock, while held

    def __enter__(self) -> None:
        module = self._module
        module.lock.acquire_shared()
        if module.serial_reason is not None:
            self._serial = module._serial_lock
            try:
                self._serial.acquire()
            except BaseException:
                module.lock.release_shared()
                raise

    def __exit__(self, *exc: object) -> None:
        if self._serial is not None:
            self._serial.release()
        self._module.lock.release_shared()
