"""What a module and a token hold, said when a configured token or key label is not there.

A wrong label is the most common start-up mistake; naming what is there instead (token labels, private
key labels) turns it into a one-line fix. Labels only: nothing secret is read.
"""

from __future__ import annotations

from typing import Any

import pkcs11

_SHOWN = 20  # labels named in one message
_SCANNED = 1000  # objects looked at, at most (a production HSM partition may hold many keys)


def _names(labels: list[str], more: bool) -> str:
    shown = ", ".join(repr(label) for label in labels[:_SHOWN])
    hidden = len(labels) - _SHOWN
    if hidden > 0:
        shown += f" and {hidden}{'+' if more else ''} more"
    return shown


def token_labels(lib: Any) -> list[str]:
    """Labels of the tokens present in the module's slots (no login needed)."""
    labels = []
    for slot in lib.get_slots(token_present=True):
        try:
            token = slot.get_token()
        except pkcs11.exceptions.PKCS11Error:
            continue
        if token.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED:  # not the free slot SoftHSM2 always offers
            labels.append(token.label)
    return labels


def tokens_held(lib: Any) -> str:
    """``the module holds tokens 'a', 'b'`` (or says it holds none, or that it cannot tell)."""
    try:
        labels = token_labels(lib)
    except pkcs11.exceptions.PKCS11Error as exc:
        return f"the module's slots cannot be listed ({type(exc).__name__})"
    return f"the module holds tokens {_names(labels, False)}" if labels else "the module holds no token"


def private_key_labels(session: Any) -> tuple[list[str], bool]:
    """Labels of the private keys a logged-in session sees (sorted), and whether there were more to scan."""
    labels: list[str] = []
    more = False
    for n, key in enumerate(session.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY})):
        if n >= _SCANNED:
            more = True
            break
        try:
            labels.append(str(key[pkcs11.Attribute.LABEL]))
        except pkcs11.exceptions.PKCS11Error:
            labels.append("(no label)")
    return sorted(labels), more


def keys_held(session: Any, token_label: str) -> str:
    """``token 'x' holds private keys 'a', 'b'`` (or none)."""
    try:
        labels, more = private_key_labels(session)
    except pkcs11.exceptions.PKCS11Error as exc:
        return f"the private keys of token {token_label!r} cannot be listed ({type(exc).__name__})"
    if not labels:
        return f"token {token_label!r} holds no private key this user can see"
    return f"token {token_label!r} holds private keys {_names(labels, more)}"
