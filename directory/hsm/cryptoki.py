"""The few raw Cryptoki calls python-pkcs11 does not expose.

python-pkcs11 calls ``C_Initialize(NULL)``. Under that call SoftHSM2 (and PKCS#11 in general) may
assume the application is single-threaded and turn its own locking off; python-pkcs11 releases the
GIL around C calls, so two threads signing at once then corrupt the module's heap. We re-initialise
the already-loaded module with ``CKF_OS_LOCKING_OK`` through ctypes, on the same ``dlopen`` handle
(the dynamic loader hands back the instance python-pkcs11 loaded, so the state is shared).

We also log in on an existing session here, because python-pkcs11 only logs in while opening a
session and raises (leaking the handle) when the user is already logged in.
"""

from __future__ import annotations

import ctypes

CKR_OK = 0x0
CKR_CRYPTOKI_NOT_INITIALIZED = 0x190
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKR_USER_ALREADY_LOGGED_IN = 0x100
CKF_OS_LOCKING_OK = 0x2
CKU_USER = 1

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


# Order of CK_FUNCTION_LIST in pkcs11f.h (v2.x); we only need the first twenty entries.
_FUNCTIONS = (
    "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList",
    "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo", "C_InitToken",
    "C_InitPIN", "C_SetPIN", "C_OpenSession", "C_CloseSession", "C_CloseAllSessions",
    "C_GetSessionInfo", "C_GetOperationState", "C_SetOperationState", "C_Login", "C_Logout",
)


class _Version(ctypes.Structure):
    _fields_ = (("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte))


class _FunctionList(ctypes.Structure):
    _fields_ = (("version", _Version), *((name, ctypes.c_void_p) for name in _FUNCTIONS))


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
        self._initialize = ctypes.CFUNCTYPE(_CK_RV, ctypes.c_void_p)(table.C_Initialize)
        self._finalize = ctypes.CFUNCTYPE(_CK_RV, ctypes.c_void_p)(table.C_Finalize)
        self._close_all = ctypes.CFUNCTYPE(_CK_RV, _CK_ULONG)(table.C_CloseAllSessions)
        self._login = ctypes.CFUNCTYPE(_CK_RV, _CK_ULONG, _CK_ULONG, ctypes.c_char_p, _CK_ULONG)(
            table.C_Login
        )
        self._logout = ctypes.CFUNCTYPE(_CK_RV, _CK_ULONG)(table.C_Logout)

    def initialize_with_os_locking(self) -> None:
        """(Re)initialise the module so that it uses OS mutexes: thread-safe from here on."""
        rv = self._finalize(None)
        if rv not in (CKR_OK, CKR_CRYPTOKI_NOT_INITIALIZED):
            raise CryptokiError("C_Finalize", rv)
        args = _InitArgs(None, None, None, None, CKF_OS_LOCKING_OK, None)
        rv = self._initialize(ctypes.cast(ctypes.pointer(args), ctypes.c_void_p))
        if rv != CKR_OK:
            raise CryptokiError("C_Initialize", rv)

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

    def close_all_sessions(self, slot_id: int) -> None:
        """Close every session on a slot (tests use it to pull sessions away under the signer)."""
        rv = self._close_all(slot_id)
        if rv != CKR_OK:
            raise CryptokiError("C_CloseAllSessions", rv)
