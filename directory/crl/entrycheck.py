"""The CRL self-check's look at every entry: nothing we publish makes a relying party's parser fail.

``cryptography`` parses the structure of every entry when it loads a CRL (serial INTEGER, revocationDate,
each extension's OID, criticality and OCTET STRING), but an extension's *value* (a reasonCode ENUMERATED,
an invalidityDate GeneralizedTime) only when asked, and asking costs ~2 µs an entry in Python objects:
2 s at a million entries, more than the whole build. Identical bytes parse identically, so the entries'
extension lists are walked here (one pass over the DER), and each *distinct* list is parsed by
``cryptography``, once, in a CRL of its own. A million entries have a few dozen distinct lists (a reason
code each, invalidity dates where operators gave one). Inside the service, a rebuild walks only the runs
of entries whose bytes changed since the previous build (``WalkCache``); the others are hashed.

Every extension must also be one we write (reasonCode, invalidityDate), never critical.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import CRLEntryExtensionOID

from directory import der

ENTRY_EXTENSIONS = {CRLEntryExtensionOID.CRL_REASON, CRLEntryExtensionOID.INVALIDITY_DATE}
_EARLIEST = datetime(1950, 1, 1, tzinfo=UTC)
_ALGORITHM = bytes.fromhex("300d06092a864886f70d01010b0500")  # sha256WithRSAEncryption: a placeholder


class EntryProblem(ValueError):
    """An entry a relying party could not read (or that we never write); names the serial."""


def _tlv(buf: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the TLV at ``i``; DER lengths only."""
    first = buf[i + 1]
    if first < 0x80:
        return buf[i], i + 2, i + 2 + first
    count = first & 0x7F
    start = i + 2 + count
    return buf[i], start, start + int.from_bytes(buf[i + 2:start], "big")


def revoked_region(crl: bytes) -> tuple[int, int]:
    """Where the revokedCertificates' elements are in a DER CRL ((0, 0) when there are none)."""
    _, tbs, _ = _tlv(crl, 0)  # CertificateList
    _, i, tbs_end = _tlv(crl, tbs)  # TBSCertList
    if crl[i] == 0x02:  # version (v2; absent in v1 CRLs)
        i = _tlv(crl, i)[2]
    for _ in range(3):  # signature, issuer, thisUpdate
        i = _tlv(crl, i)[2]
    if i < tbs_end and crl[i] in (0x17, 0x18):  # nextUpdate
        i = _tlv(crl, i)[2]
    if i < tbs_end and crl[i] == 0x30:
        _, start, end = _tlv(crl, i)
        return start, end
    return 0, 0


def _walk(crl: bytes, i: int, end: int) -> tuple[int, dict[bytes, int]]:
    """(entries in crl[i:end], {extension list DER: offset of the first entry carrying it}).

    The hot loop of a cold build (a few hundred ns an entry): as few operations per entry as Python allows."""
    seen: dict[bytes, int] = {}
    first_at = seen.setdefault
    count = 0
    while i < end:
        length = crl[i + 1]
        if length < 0x80:
            body = i + 2
            nxt = body + length
        else:
            _, body, nxt = _tlv(crl, i)
        j = body + 4 + crl[body + 1]  # past the serial (at most 21 octets: a short length) and a tag
        j += crl[j - 1]  # past revocationDate
        if j < nxt:
            first_at(crl[j:nxt], body)
        elif j > nxt:
            raise EntryProblem(f"entry {count} overruns its own length")
        count += 1
        i = nxt
    if i != end:
        raise EntryProblem("the last entry overruns the list")
    return count, seen


class WalkCache:
    """Walk results of the previous build's entry segments, by SHA-256 of their bytes.

    A full CRL's entries are written in segments (aligned ranges of certificate ids); a revocation changes
    one, so a rebuild walks that one and hashes the others. Identical bytes walk identically: reusing the
    result is as good as walking again. ``save``/``load`` keep it beside the CRL (a dot-named file, never
    served), so a build in a new process (``annuaire crl build``, a restarted service) benefits too; a
    missing, unreadable or malformed file only means walking again."""

    MAX_SAVED_BLOCKS = 10_000  # distinct extension lists kept on disk (invalidity dates can make many)

    def __init__(self) -> None:
        self.results: dict[bytes, tuple[int, dict[bytes, int]]] = {}

    def save(self, path: Path) -> None:
        """Write the results to ``path`` atomically (no fsync: losing it costs one walk)."""
        if sum(len(blocks) for _, blocks in self.results.values()) > self.MAX_SAVED_BLOCKS:
            return
        doc = {"version": 1, "segments": [[key.hex(), count, [[b.hex(), at] for b, at in blocks.items()]]
                                          for key, (count, blocks) in self.results.items()]}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, path)

    def load(self, path: Path) -> None:
        """Read results saved by ``save``; anything else leaves the cache as it was."""
        try:
            doc = json.loads(path.read_text())
            results = {bytes.fromhex(key): (int(count), {bytes.fromhex(b): int(at) for b, at in blocks})
                       for key, count, blocks in doc["segments"]} if doc.get("version") == 1 else {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return
        if all(len(key) == 32 and count >= 0 for key, (count, _) in results.items()):
            self.results = results


def distinct_extensions(crl: bytes, segments: Sequence[int] = (),
                        cache: WalkCache | None = None) -> tuple[int, dict[bytes, int]]:
    """(number of entries, {extension list DER: offset of the first entry's serial carrying it}).

    ``segments``: lengths of consecutive runs of whole entries covering the list (the builder's chunks);
    with a ``cache``, a run whose bytes were walked by the previous call is not walked again."""
    start, end = revoked_region(crl)
    if sum(segments) != end - start:
        segments = (end - start,)
    view = memoryview(crl)
    count, seen = 0, {}
    results: dict[bytes, tuple[int, dict[bytes, int]]] = {}
    for length in segments:
        key = hashlib.sha256(view[start:start + length]).digest() if cache is not None else b""
        found = cache.results.get(key) if cache is not None else None
        if found is None:
            n, blocks = _walk(crl, start, start + length)
            found = (n, {block: at - start for block, at in blocks.items()})
        results[key] = found
        count += found[0]
        for block, at in found[1].items():
            seen.setdefault(block, start + at)
        start += length
    if cache is not None:
        cache.results = results  # only the last build's: bounded by its number of segments
    return count, seen


def check_entry_extensions(crl: bytes, segments: Sequence[int] = (), cache: WalkCache | None = None) -> int:
    """Parse every distinct entry-extension list of ``crl`` with ``cryptography``; return the entry count.

    Raises ``EntryProblem`` naming the first serial whose extensions do not parse, are unknown, or critical."""
    count, seen = distinct_extensions(crl, segments, cache)
    if not seen:
        return count
    blocks = list(seen)
    when = der.time(int(_EARLIEST.timestamp()) + 86400)
    entries = b"".join(der.sequence(der.integer(n + 1), when, block) for n, block in enumerate(blocks))
    tbs = der.sequence(b"\x02\x01\x01", _ALGORITHM, der.sequence(), when, der.sequence(entries))
    probe = x509.load_der_x509_crl(der.sequence(tbs, _ALGORITHM, der.tlv(0x03, b"\x00")))
    for n, entry in enumerate(probe):
        try:
            _check(entry)
        except (ValueError, x509.DuplicateExtension) as exc:
            serial_at = seen[blocks[n]]
            _, start, end = _tlv(crl, serial_at)
            serial = int.from_bytes(crl[start:end], "big")
            raise EntryProblem(f"entry for serial 0x{serial:x}: {exc}") from None
    return count


def _check(entry: x509.RevokedCertificate) -> None:
    for ext in entry.extensions:  # parses every value
        if ext.oid not in ENTRY_EXTENSIONS:
            raise ValueError(f"extension {ext.oid.dotted_string} is not one this service writes")
        if ext.critical:
            raise ValueError(f"extension {ext.oid.dotted_string} is marked critical")
        if isinstance(ext.value, x509.InvalidityDate) and ext.value.invalidity_date_utc < _EARLIEST:
            raise ValueError(f"invalidity date {ext.value.invalidity_date_utc:%Y-%m-%d} is before 1950")
