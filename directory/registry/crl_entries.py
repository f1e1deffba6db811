"""A revoked certificate's CRL entry, encoded once (at revocation) and kept in ``crl_entries``.

CRL builds only concatenate these bytes; ``serial_low`` is the partition key (partition = serial_low % N).
"""

from __future__ import annotations

from directory import der
from directory.publication import partition_key
from directory.registry.backends import Conn
from directory.revocation import REASON_CODES


def serial_low(serial_hex: str) -> int:
    """The serial's CRL partition key (``publication.partition_key``), stored so a partition is one query."""
    return partition_key(int(serial_hex, 16))


def crl_entry_for(serial_hex: str, status: str, revocation_time: int | None, reason: str | None,
                  invalidity_date: int | None) -> bytes | None:
    if status == "good" or revocation_time is None:
        return None
    code = REASON_CODES[reason] if reason else None
    return der.revoked_entry(int(serial_hex, 16), revocation_time, code, invalidity_date)


def store_crl_entry(tx: Conn, issuer_id: int, cid: int, serial_hex: str, not_after: int | None,
                     status: str, revocation_time: int | None, reason: str | None,
                     invalidity_date: int | None) -> None:
    """Keep ``crl_entries`` in step with the status: the entry bytes exist exactly while revoked or held."""
    entry = crl_entry_for(serial_hex, status, revocation_time, reason, invalidity_date)
    if entry is None:
        tx.execute("DELETE FROM crl_entries WHERE issuer_id = ? AND certificate_id = ?", (issuer_id, cid))
    else:
        tx.execute("INSERT OR REPLACE INTO crl_entries (issuer_id, certificate_id, not_after, serial_low, entry_der) "
                   "VALUES (?, ?, ?, ?, ?)", (issuer_id, cid, not_after, serial_low(serial_hex), entry))
