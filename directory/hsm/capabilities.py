"""What the token and each key can do, and which mechanism signs for each key.

Modules differ: SoftHSM2 has raw ``CKM_ECDSA`` but no ``CKM_ECDSA_SHA256``; tpm2-pkcs11 has both and caps
RSA at 3072 bits; opencryptoki's software token has no EC mechanism at all; an HSM's key ceremony may
restrict a key to one mechanism with ``CKA_ALLOWED_MECHANISMS``. For each key we prefer the raw mechanism
(only the digest crosses the PKCS#11 boundary, whatever the size of the CRL) and fall back to the
mechanism where the token hashes the data itself; a key with neither is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pkcs11

from directory.hsm.algorithms import SignatureAlgorithm
from directory.hsm.cryptoki import CK_EFFECTIVELY_INFINITE, CK_UNAVAILABLE_INFORMATION, MechanismInfo, TokenInfo
from directory.hsm.errors import KeyUnusable

CKF_SIGN = 0x800
CKM_RSA_PKCS, CKM_RSA_PKCS_PSS, CKM_ECDSA = 0x1, 0xD, 0x1041
_RAW = {"pkcs1": CKM_RSA_PKCS, "pss": CKM_RSA_PKCS_PSS, "ecdsa": CKM_ECDSA}
_HASHING = {
    ("pkcs1", "sha256"): 0x40, ("pkcs1", "sha384"): 0x41, ("pkcs1", "sha512"): 0x42,
    ("pss", "sha256"): 0x43, ("pss", "sha384"): 0x44, ("pss", "sha512"): 0x45,
    ("ecdsa", "sha256"): 0x1044, ("ecdsa", "sha384"): 0x1045, ("ecdsa", "sha512"): 0x1046,
}
# token flags worth a warning: the user PIN is close to being locked, or must be changed first
_PIN_WARNINGS = {0x10000: "user PIN count low", 0x20000: "user PIN final try", 0x40000: "user PIN locked",
                 0x80000: "user PIN to be changed"}


def mechanism_name(mechanism: int) -> str:
    try:
        return "CKM_" + pkcs11.Mechanism(mechanism).name
    except ValueError:
        return f"mechanism 0x{mechanism:x}"


@dataclass(frozen=True)
class Plan:
    """How one key signs with one algorithm."""

    mechanism: int
    token_hashes: bool  # False: the token gets the digest made on the host (a DigestInfo for PKCS#1)

    def describe(self) -> str:
        how = "the token hashes the data" if self.token_hashes else "digest made on the host"
        return f"{mechanism_name(self.mechanism)} ({how})"


@dataclass(frozen=True)
class KeyFacts:
    """What the token says about a private key."""

    kind: str  # "rsa", "ec", or the key type's name
    can_sign: bool
    allowed: frozenset[int] | None  # CKA_ALLOWED_MECHANISMS; None: no restriction


def key_facts(key: Any, allowed: frozenset[int] | None) -> KeyFacts:
    key_type = key.key_type
    kind = {pkcs11.KeyType.RSA: "rsa", pkcs11.KeyType.EC: "ec"}.get(key_type, str(getattr(key_type, "name", key_type)))
    try:
        can_sign = bool(key[pkcs11.Attribute.SIGN])
    except pkcs11.exceptions.PKCS11Error:  # not readable: let the signature attempt tell
        can_sign = True
    return KeyFacts(kind.lower(), can_sign, allowed)


def choose(label: str, algorithm: SignatureAlgorithm, facts: KeyFacts, offered: dict[int, MechanismInfo]) -> Plan:
    """The raw mechanism if the module offers it and the key allows it, else the hashing one; else refuse."""
    if facts.kind != algorithm.key_kind:
        raise KeyUnusable(f"key {label!r} is a {facts.kind.upper()} key in the token, but its certificate and "
                          f"algorithm {algorithm.name} need a {algorithm.key_kind.upper()} key")
    if not facts.can_sign:
        raise KeyUnusable(f"key {label!r} has CKA_SIGN false in the token: it may not sign anything")
    reasons = []
    candidates = ((_RAW[algorithm.scheme], False), (_HASHING[algorithm.scheme, algorithm.hash], True))
    for mechanism, token_hashes in candidates:
        info = offered.get(mechanism)
        if info is None:
            reasons.append(f"{mechanism_name(mechanism)}: the module does not offer it")
        elif not info.flags & CKF_SIGN:
            reasons.append(f"{mechanism_name(mechanism)}: the module offers it, but not for signing")
        elif facts.allowed is not None and mechanism not in facts.allowed:
            reasons.append(f"{mechanism_name(mechanism)}: not in the key's CKA_ALLOWED_MECHANISMS")
        else:
            return Plan(mechanism, token_hashes)
    raise KeyUnusable(f"key {label!r} cannot sign as {algorithm.name} with this module: " + "; ".join(reasons))


def size_warning(plan: Plan, offered: dict[int, MechanismInfo], bits: int) -> str | None:
    """The module's advertised key sizes for the mechanism, when the key is outside them (0 means unknown)."""
    info = offered.get(plan.mechanism)
    if info is None or not info.max_key_size or info.min_key_size <= bits <= info.max_key_size:
        return None
    return (f"{bits}-bit key outside the {info.min_key_size}-{info.max_key_size} bits the module advertises for "
            f"{mechanism_name(plan.mechanism)}")


def session_budget(max_concurrent: int, info: TokenInfo, serialised: bool) -> tuple[int, str]:
    """How many sessions to keep (the bound on concurrent signatures), and why."""
    if serialised:
        return 1, "serialised module: one session"
    limit = info.max_sessions
    if limit == CK_EFFECTIVELY_INFINITE:
        return max_concurrent, f"max_concurrent = {max_concurrent} (the token sets no session limit)"
    if limit == CK_UNAVAILABLE_INFORMATION:
        return max_concurrent, f"max_concurrent = {max_concurrent} (the token does not say its session limit)"
    if limit < max_concurrent:
        return max(1, limit), (f"{max(1, limit)}: the token allows {limit} sessions per application, "
                               f"fewer than max_concurrent = {max_concurrent}")
    return max_concurrent, f"max_concurrent = {max_concurrent} (the token allows {limit} sessions)"


def flag_names(flags: int) -> str:
    names = [f.name.lower().replace("_", " ") for f in pkcs11.TokenFlag if f.value and flags & f.value == f.value
             and f.name]
    return ", ".join(names) or "none"


def _count(value: int) -> str:
    if value == CK_UNAVAILABLE_INFORMATION:
        return "not said"
    return "no limit" if value == CK_EFFECTIVELY_INFINITE else str(value)


@dataclass
class KeyReport:
    label: str
    key: str  # "RSA-2048", "EC-256"
    algorithm: str
    plan: Plan | None = None
    problem: str | None = None  # set: this key cannot be used as configured
    missing: bool = False  # the label is not on the token (a readiness problem, not a capability one)
    warning: str | None = None


@dataclass
class TokenReport:
    """What was read from the module at start (logged) and by ``check-config`` (printed)."""

    module: str
    library: str
    token: TokenInfo
    locking: str
    sessions: int
    sessions_reason: str
    keys: list[KeyReport] = field(default_factory=list)

    @property
    def unusable(self) -> list[str]:
        return [k.problem for k in self.keys if k.problem and not k.missing]

    def lines(self) -> list[str]:
        t = self.token
        flags = [name for bit, name in _PIN_WARNINGS.items() if t.flags & bit]
        out = [f"PKCS#11 module {self.module} ({self.library}): {self.locking}",
               f"token {t.label!r} ({t.manufacturer} {t.model}, serial {t.serial or '-'}): sessions per application "
               f"{_count(t.max_sessions)}, read-write {_count(t.max_rw_sessions)}; flags: {flag_names(t.flags)}",
               f"signing sessions: {self.sessions_reason}"]
        out += [f"WARNING: token {t.label!r}: {flag}" for flag in flags]
        for k in self.keys:
            head = f"key {k.label!r} ({k.key}, {k.algorithm}): "
            if k.problem:
                out.append(head + ("MISSING: " if k.missing else "REFUSED: ") + k.problem)
            else:
                assert k.plan is not None
                out.append(head + k.plan.describe() + (f"; WARNING: {k.warning}" if k.warning else ""))
        return out

    def as_dict(self) -> dict[str, Any]:
        t = self.token
        return {"module": self.module, "library": self.library, "locking": self.locking,
                "token": {"label": t.label, "manufacturer": t.manufacturer, "model": t.model, "serial": t.serial,
                          "flags": flag_names(t.flags), "max_sessions": _count(t.max_sessions),
                          "max_rw_sessions": _count(t.max_rw_sessions)},
                "sessions": self.sessions, "sessions_reason": self.sessions_reason,
                "keys": [{"label": k.label, "key": k.key, "algorithm": k.algorithm,
                          "mechanism": mechanism_name(k.plan.mechanism) if k.plan else None,
                          "token_hashes": k.plan.token_hashes if k.plan else None,
                          "problem": k.problem, "missing": k.missing, "warning": k.warning} for k in self.keys]}


_MECHANISMS: dict[int, pkcs11.Mechanism] = {}


def call_arguments(mechanism: int, algorithm: SignatureAlgorithm) -> tuple[pkcs11.Mechanism, tuple[Any, ...] | None]:
    """python-pkcs11's ``mechanism`` and ``mechanism_param`` for a plan's mechanism (the Enum made once)."""
    found = _MECHANISMS.get(mechanism)
    if found is None:  # an Enum call costs microseconds, on every signature
        found = _MECHANISMS[mechanism] = pkcs11.Mechanism(mechanism)
    if algorithm.scheme != "pss":
        return found, None
    name = algorithm.hash.upper()
    return found, (getattr(pkcs11.Mechanism, name), getattr(pkcs11.MGF, name), algorithm.digest_size)
