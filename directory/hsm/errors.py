"""Signer errors; their messages never contain the PIN."""

from __future__ import annotations

from directory.refusal import Refused


class HsmError(Exception):
    """Base class of signer errors."""


class HsmUnavailable(HsmError):
    """The token cannot be used right now (absent, module failing, PIN refused); retry later."""


class PinRefused(HsmUnavailable, Refused):
    """The token refused the PIN; we back off instead of retrying (tokens lock PINs after a few failures)."""


class KeyNotFound(HsmError):
    """No private key with this label on the token (or several)."""


class KeyUnusable(HsmError):
    """The key cannot sign as configured with this module (mechanism not offered or not allowed, wrong key type).

    A configuration problem, not an outage: the service refuses to start with it.
    """


class SignatureCheckFailed(HsmError):
    """The token returned a signature that does not verify under the expected certificate."""
