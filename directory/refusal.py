"""The one family of refusals: a request understood and declined for a reason the caller can act on.

Nothing was changed, and the message says why in words an operator can use. Every front door treats the
family alike: the CLI prints ``annuaire: refused: <message>`` and exits 1; the admin API answers 409 when
the current state forbids the request (``conflict``) and 422 when the request itself is wrong, with the
message as the detail. Where one comes from is its subclass: ``ingest.importer.CertificateRefused`` (a
certificate that will not be imported), ``revocation.RevocationRefused`` (an RFC 5280 rule),
``hsm.errors.PinRefused`` (a PIN the token refused: never tried again), ``admin.api.ApiError`` (an answer
with its own HTTP status).
"""

from __future__ import annotations


class Refused(Exception):
    """Declined, nothing changed; ``conflict``: the request is well formed but the current state forbids it."""

    def __init__(self, message: str, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict
