"""The few raw Cryptoki calls python-pkcs11 does not expose (or makes in a way we cannot use).

- ``C_Initialize``: python-pkcs11 passes ``NULL``, which lets a module assume a single-threaded
  application and skip its own locking; we make the very first call ourselves, with ``CKF_OS_LOCKING_OK``
  (see ``module.py``). The dynamic loader hands python-pkcs11 the same instance of the library later.
- ``C_Login`` on an existing session: python-pkcs11 only logs in while opening a session and raises
  (leaking the handle) when the user is already logged in.
- ``C_GetTokenInfo`` (session limits), ``C_GetMechanismList``/``C_GetMechanismInfo`` and
  ``C_GetAttributeValue`` for ``CKA_ALLOWED_MECHANISMS``: what the token and each key can do.
- ``C_SignInit`` + ``C_Sign`` for a mechanism without parameters, into a buffer sized beforehand: two calls
  that release the GIL where python-pkcs11 makes three (it asks the length first), without its per-call
  objects; on the live OCSP path every signature pays them (see ``direct.py`` for the fallback on errors).
  Their arguments are plain integers (addresses of a ``CK_MECHANISM`` made once per mechanism and of a
  ``SignBuffer`` made once per session): no ctypes object is built per signature. Each of the two calls is
  made with the GIL held while it stays quick (``Quick``): getting the GIL back can take longer than such a call;
  only into a module that computes in this process (SoftHSM2: ``Cryptoki.held_calls``), never one that may wait
  on a network or a device.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

CKR_OK = 0x0
CKR_CANT_LOCK = 0xA
CKR_ATTRIBUTE_SENSITIVE = 0x11
CKR_ATTRIBUTE_TYPE_INVALID = 0x12
CKR_USER_ALREADY_LOGGED_IN = 0x100
CKR_BUFFER_TOO_SMALL = 0x150
CKR_CRYPTOKI_NOT_INITIALIZED = 0x190
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKF_OS_LOCKING_OK = 0x2
CKU_USER = 1
CKA_ALLOWED_MECHANISMS = 0x40000600
CK_UNAVAILABLE_INFORMATION = ctypes.c_ulong(-1).value
CK_EFFECTIVELY_INFINITE = 0

_CK_RV = ctypes.c_ulong
_CK_ULONG = ctypes.c_ulong


class CryptokiError(RuntimeError):
    """A raw Cryptoki call returned an error code."""

    def __init__(self, function: str, rv: int) -> None:
        super().__init__(f"{function} failed with CKR 0x{rv:x}")
        self.function = function
        self.rv = rv


class _InitArgs(ctypes.Structure):
    _fields_ = (
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", _CK_ULONG),
        ("pReserved", ctypes.c_void_p),
    )


class _Version(ctypes.Structure):
    _fields_ = (("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte))


class _Mechanism(ctypes.Structure):
    _fields_ = (("mechanism", _CK_ULONG), ("pParameter", ctypes.c_void_p), ("ulParameterLen", _CK_ULONG))


class _TokenInfo(ctypes.Structure):
    _fields_ = (
        ("label", ctypes.c_char * 32), ("manufacturerID", ctypes.c_char * 32), ("model", ctypes.c_char * 16),
        ("serialNumber", ctypes.c_char * 16), ("flags", _CK_ULONG),
        ("ulMaxSessionCount", _CK_ULONG), ("ulSessionCount", _CK_ULONG),
        ("ulMaxRwSessionCount", _CK_ULONG), ("ulRwSessionCount", _CK_ULONG),
        ("ulMaxPinLen", _CK_ULONG), ("ulMinPinLen", _CK_ULONG),
        ("ulTotalPublicMemory", _CK_ULONG), ("ulFreePublicMemory", _CK_ULONG),
        ("ulTotalPrivateMemory", _CK_ULONG), ("ulFreePrivateMemory", _CK_ULONG),
        ("hardwareVersion", _Version), ("firmwareVersion", _Version), ("utcTime", ctypes.c_char * 16),
    )


class _MechanismInfo(ctypes.Structure):
    _fields_ = (("ulMinKeySize", _CK_ULONG), ("ulMaxKeySize", _CK_ULONG), ("flags", _CK_ULONG))


class _Attribute(ctypes.Structure):
    _fields_ = (("type", _CK_ULONG), ("pValue", ctypes.c_void_p), ("ulValueLen", _CK_ULONG))


# Order of CK_FUNCTION_LIST in pkcs11f.h (v2.x); we only need the first forty-four entries.
_FUNCTIONS = (
    "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList",
    "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo", "C_InitToken",
    "C_InitPIN", "C_SetPIN", "C_OpenSession", "C_CloseSession", "C_CloseAllSessions",
    "C_GetSessionInfo", "C_GetOperationState", "C_SetOperationState", "C_Login", "C_Logout",
    "C_CreateObject", "C_CopyObject", "C_DestroyObject", "C_GetObjectSize", "C_GetAttributeValue",
    "C_SetAttributeValue", "C_FindObjectsInit", "C_FindObjects", "C_FindObjectsFinal", "C_EncryptInit",
    "C_Encrypt", "C_EncryptUpdate", "C_EncryptFinal", "C_DecryptInit", "C_Decrypt",
    "C_DecryptUpdate", "C_DecryptFinal", "C_DigestInit", "C_Digest", "C_DigestUpdate",
    "C_DigestKey", "C_DigestFinal", "C_SignInit", "C_Sign",
)


class _FunctionList(ctypes.Structure):
    _fields_ = (("version", _Version), *((name, ctypes.c_void_p) for name in _FUNCTIONS))


QUICK_CALL = 250e-6  # seconds: a call at most this long is made with the GIL held
_VERY_SLOW = 8 * QUICK_CALL  # one call this long is enough to stop holding the GIL for it
_PROBE_FIRST, _PROBE_MAX = 1024, 1 << 20  # released calls before trying the GIL-held way again (doubling)


class Quick:
    """Whether one Cryptoki function, for one mechanism, is called with the GIL held: while it is quick.

    ctypes releases the GIL around every foreign call; getting it back means waiting for whichever thread took
    it meanwhile (the event loop, another signing thread), a hand-off each way. A call shorter than that wait is
    better made with the GIL kept: SoftHSM2's ``C_SignInit`` (about 50 µs for RSA-2048, 31 µs for P-256) and
    its P-256 ``C_Sign`` (24 µs). Measured with two signing threads beside a busy Python thread: P-256
    signatures/s doubled at the same CPU per signature, RSA-2048 (whose ``C_Sign`` releases) unchanged. Other
    threads are held up no longer than ``QUICK_CALL`` per call. Every call made that way is timed. Two slow
    ones in a row, or one slower than ``_VERY_SLOW`` (an RSA ``C_Sign``, a network HSM, a TPM), send the next
    calls the GIL-releasing way; a single slow one among quick ones is the host's doing (the thread was
    preempted), not the call's. After 1024 released calls one is tried held again (then after 2048, ... at most
    2**20 while it stays slow): a slow module holds the other threads up once per probe, rarely. Races between
    threads on these fields cost at most one probe more or less.
    """

    __slots__ = ("held", "interval", "slow", "wait")

    def __init__(self) -> None:
        self.held = True  # the first calls are timed held: most calls are quick
        self.slow = False  # the last GIL-held call took longer than QUICK_CALL
        self.wait = 0
        self.interval = _PROBE_FIRST

    def took(self, seconds: float) -> None:
        """After a GIL-held call of ``seconds``."""
        if seconds <= QUICK_CALL:
            self.slow, self.interval = False, _PROBE_FIRST
            return
        if self.slow or seconds > _VERY_SLOW:
            self.held, self.wait = False, self.interval
            self.interval = min(self.interval * 2, _PROBE_MAX)
        self.slow = True  # a probe that is slow again goes back at once

    def released(self) -> None:
        """After a GIL-releasing call: count down to the next probe."""
        self.wait -= 1
        if self.wait <= 0:
            self.held = True


class SignMechanism:
    """A ``CK_MECHANISM`` without parameters, made once (its address is passed to ``C_SignInit``), with how
    its two calls are made (``Quick``)."""

    __slots__ = ("address", "init", "sign", "struct")

    def __init__(self, mechanism: int) -> None:
        self.struct = _Mechanism(mechanism, None, 0)  # only ever read by the module
        self.address = ctypes.addressof(self.struct)
        self.init = Quick()
        self.sign = Quick()


class SignBuffer:
    """Where ``C_Sign`` writes, made once per session: a session is used by one thread at a time."""

    __slots__ = ("length", "length_address", "out", "out_address", "size")

    def __init__(self, size: int = 512) -> None:  # RSA up to 4096 bits without growing
        self.size = size
        self.out = ctypes.create_string_buffer(size)
        self.length = _CK_ULONG(size)
        self.out_address = ctypes.addressof(self.out)
        self.length_address = ctypes.addressof(self.length)


@dataclass(frozen=True)
class TokenInfo:
    """``CK_TOKEN_INFO``, the parts we use. Counts may be ``CK_UNAVAILABLE_INFORMATION`` or 0 (no limit)."""

    label: str
    manufacturer: str
    model: str
    serial: str
    flags: int
    max_sessions: int
    sessions: int
    max_rw_sessions: int
    rw_sessions: int


@dataclass(frozen=True)
class MechanismInfo:
    min_key_size: int
    max_key_size: int
    flags: int


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip(" \x00")


class Cryptoki:
    """Raw entry points of one PKCS#11 module, resolved through ``C_GetFunctionList``."""

    def __init__(self, module_path: str) -> None:
        self._dll = ctypes.CDLL(module_path)
        get_list = self._dll.C_GetFunctionList
        get_list.restype = _CK_RV
        get_list.argtypes = (ctypes.POINTER(ctypes.POINTER(_FunctionList)),)
        ptr = ctypes.POINTER(_FunctionList)()
        rv = get_list(ctypes.byref(ptr))
        if rv != CKR_OK:
            raise CryptokiError("C_GetFunctionList", rv)
        table = ptr.contents
        ulong, vp = _CK_ULONG, ctypes.c_void_p
        self._initialize = ctypes.CFUNCTYPE(_CK_RV, vp)(table.C_Initialize)
        self._finalize = ctypes.CFUNCTYPE(_CK_RV, vp)(table.C_Finalize)
        self._token_info = ctypes.CFUNCTYPE(_CK_RV, ulong, ctypes.POINTER(_TokenInfo))(table.C_GetTokenInfo)
        self._mechanism_list = ctypes.CFUNCTYPE(_CK_RV, ulong, ctypes.POINTER(ulong), ctypes.POINTER(ulong))(
            table.C_GetMechanismList)
        self._mechanism_info = ctypes.CFUNCTYPE(_CK_RV, ulong, ulong, ctypes.POINTER(_MechanismInfo))(
            table.C_GetMechanismInfo)
        self._close_all = ctypes.CFUNCTYPE(_CK_RV, ulong)(table.C_CloseAllSessions)
        self._login = ctypes.CFUNCTYPE(_CK_RV, ulong, ulong, ctypes.c_char_p, ulong)(table.C_Login)
        self._logout = ctypes.CFUNCTYPE(_CK_RV, ulong)(table.C_Logout)
        self._get_attribute = ctypes.CFUNCTYPE(_CK_RV, ulong, ulong, ctypes.POINTER(_Attribute), ulong)(
            table.C_GetAttributeValue)
        # addresses as integers: the cheapest conversions ctypes makes (see ``sign_into``); each function
        # twice: GIL released (CFUNCTYPE) and GIL held (PYFUNCTYPE), chosen per call (``Quick``)
        sign_init, sign = (_CK_RV, ulong, vp, ulong), (_CK_RV, ulong, ctypes.c_char_p, ulong, vp, vp)
        self._sign_init = ctypes.CFUNCTYPE(*sign_init)(table.C_SignInit)
        self._sign_init_held = ctypes.PYFUNCTYPE(*sign_init)(table.C_SignInit)
        self._sign = ctypes.CFUNCTYPE(*sign)(table.C_Sign)
        self._sign_held = ctypes.PYFUNCTYPE(*sign)(table.C_Sign)
        self._mechanisms: dict[int, SignMechanism] = {}
        # Calls may be made with the GIL held (``Quick``) only into a module that computes in this process
        # and waits on nothing outside it (``module.py`` says which): a network HSM or a TPM that stalls
        # during a GIL-held call would stall every thread of the process, the event loop serving held
        # answers included, for as long as the stall lasts.
        self.held_calls = False

    def initialize(self, os_locking: bool) -> int:
        """``C_Initialize`` with ``CKF_OS_LOCKING_OK`` (or ``NULL``); returns the CKR code, raises nothing."""
        if not os_locking:
            return int(self._initialize(None))
        args = _InitArgs(None, None, None, None, CKF_OS_LOCKING_OK, None)
        return int(self._initialize(ctypes.cast(ctypes.pointer(args), ctypes.c_void_p)))

    def finalize(self) -> None:
        rv = self._finalize(None)
        if rv not in (CKR_OK, CKR_CRYPTOKI_NOT_INITIALIZED):
            raise CryptokiError("C_Finalize", rv)

    def login(self, session_handle: int, pin: bytes) -> None:
        """Log the user in on ``session_handle``; already logged in counts as success."""
        rv = self._login(session_handle, CKU_USER, pin, len(pin))
        if rv not in (CKR_OK, CKR_USER_ALREADY_LOGGED_IN):
            raise CryptokiError("C_Login", rv)

    def logout(self, session_handle: int) -> None:
        """Log the user out of every session of this application (tests use it to simulate a lost login)."""
        rv = self._logout(session_handle)
        if rv != CKR_OK:
            raise CryptokiError("C_Logout", rv)

    def mechanism(self, mechanism: int) -> SignMechanism:
        """The ``SignMechanism`` of a mechanism without parameters (one per mechanism, kept)."""
        found = self._mechanisms.get(mechanism)
        if found is None:
            found = self._mechanisms.setdefault(mechanism, SignMechanism(mechanism))
        return found

    def sign_into(self, session_handle: int, key_handle: int, mechanism: SignMechanism, data: bytes,
                  buffer: SignBuffer) -> bytes:
        """``C_SignInit`` then ``C_Sign`` into ``buffer`` (grown if the token asks), each with the GIL held
        while it is quick (``Quick``)."""
        held_calls = self.held_calls
        quick = mechanism.init
        if held_calls and quick.held:
            started = time.perf_counter()
            rv = self._sign_init_held(session_handle, mechanism.address, key_handle)
            quick.took(time.perf_counter() - started)
        else:
            rv = self._sign_init(session_handle, mechanism.address, key_handle)
            quick.released()
        if rv != CKR_OK:
            raise CryptokiError("C_SignInit", rv)
        length = buffer.length
        length.value = buffer.size
        quick = mechanism.sign
        if held_calls and quick.held:
            started = time.perf_counter()
            rv = self._sign_held(session_handle, data, len(data), buffer.out_address, buffer.length_address)
            quick.took(time.perf_counter() - started)
        else:
            rv = self._sign(session_handle, data, len(data), buffer.out_address, buffer.length_address)
            quick.released()
        if rv == CKR_BUFFER_TOO_SMALL:  # the operation stays active; length now says what is needed
            buffer = SignBuffer(length.value)
            length = buffer.length
            rv = self._sign(session_handle, data, len(data), buffer.out_address, buffer.length_address)
        if rv != CKR_OK:
            raise CryptokiError("C_Sign", rv)
        return buffer.out.raw[: length.value]

    def close_all_sessions(self, slot_id: int) -> None:
        """Close every session on a slot (tests use it to pull sessions away under the signer)."""
        rv = self._close_all(slot_id)
        if rv != CKR_OK:
            raise CryptokiError("C_CloseAllSessions", rv)

    def token_info(self, slot_id: int) -> TokenInfo:
        info = _TokenInfo()
        rv = self._token_info(slot_id, ctypes.byref(info))
        if rv != CKR_OK:
            raise CryptokiError("C_GetTokenInfo", rv)
        return TokenInfo(_text(info.label), _text(info.manufacturerID), _text(info.model), _text(info.serialNumber),
                         info.flags, info.ulMaxSessionCount, info.ulSessionCount, info.ulMaxRwSessionCount,
                         info.ulRwSessionCount)

    def mechanisms(self, slot_id: int) -> dict[int, MechanismInfo]:
        """Every mechanism of the slot's token, with its key sizes and flags (``CKF_SIGN``...)."""
        count = _CK_ULONG(0)
        for _ in range(3):  # the list can grow between the two calls (a token inserted)
            rv = self._mechanism_list(slot_id, None, ctypes.byref(count))
            if rv != CKR_OK:
                raise CryptokiError("C_GetMechanismList", rv)
            buffer = (_CK_ULONG * max(count.value, 1))()
            rv = self._mechanism_list(slot_id, buffer, ctypes.byref(count))
            if rv == CKR_BUFFER_TOO_SMALL:
                continue
            if rv != CKR_OK:
                raise CryptokiError("C_GetMechanismList", rv)
            out = {}
            for mechanism in buffer[: count.value]:
                info = _MechanismInfo()
                rv = self._mechanism_info(slot_id, mechanism, ctypes.byref(info))
                if rv != CKR_OK:
                    raise CryptokiError("C_GetMechanismInfo", rv)
                out[int(mechanism)] = MechanismInfo(info.ulMinKeySize, info.ulMaxKeySize, info.flags)
            return out
        raise CryptokiError("C_GetMechanismList", CKR_BUFFER_TOO_SMALL)

    def allowed_mechanisms(self, session_handle: int, object_handle: int) -> frozenset[int] | None:
        """``CKA_ALLOWED_MECHANISMS`` of a key; ``None`` when the module or the key sets no such limit."""
        attribute = _Attribute(CKA_ALLOWED_MECHANISMS, None, 0)
        rv = self._get_attribute(session_handle, object_handle, ctypes.byref(attribute), 1)
        if rv in (CKR_ATTRIBUTE_TYPE_INVALID, CKR_ATTRIBUTE_SENSITIVE):
            return None
        if rv != CKR_OK:
            raise CryptokiError("C_GetAttributeValue", rv)
        size = ctypes.sizeof(_CK_ULONG)
        if attribute.ulValueLen == CK_UNAVAILABLE_INFORMATION or attribute.ulValueLen < size:
            return None  # absent or empty: PKCS#11 says any mechanism the key type allows
        buffer = (_CK_ULONG * (attribute.ulValueLen // size))()
        attribute.pValue = ctypes.cast(buffer, ctypes.c_void_p)
        rv = self._get_attribute(session_handle, object_handle, ctypes.byref(attribute), 1)
        if rv != CKR_OK:
            raise CryptokiError("C_GetAttributeValue", rv)
        return frozenset(int(m) for m in buffer[: attribute.ulValueLen // size])
