"""The CRL self-check's look at every entry: nothing we publish makes a relying party's parser fail.

``cryptography`` parses the structure of every entry when it loads a CRL (serial INTEGER, revocationDate,
each extension's OID, criticality and OCTET STRING), but an extension's *value* (a reasonCode ENUMERATED,
an invalidityDate GeneralizedTime) only when asked, and asking costs ~2 µs an entry in Python objects:
2 s at a million entries, more than the whole build. Identical bytes parse identically, so the entries'
extension lists are walked (``entrywalk``: runs of entries of known shapes matched by ``re``, in C), and
each *distinct* list is parsed by ``cryptography``, once, in a CRL of its own. A million entries have a few
dozen distinct lists (a reason code each, invalidity dates where operators gave one).

The entries themselves are parsed by ``cryptography`` run by run (the builder's segments, each in a probe
CRL of its own), and the rest of the CRL in a copy without them (``Layout.skeleton``): a SEQUENCE OF is
valid DER when its header is and each element is, so this is the parse of the whole file (the builder
checks each run as it comes from the registry, ``RunCheck``, then shows by SHA-256 that the file's TBS is
made of those very bytes); the number of entries is ``cryptography``'s count. A run of entries whose bytes
were walked and parsed before (same SHA-256) is not again (``WalkCache``): inside the service, and across
processes through a small file beside the CRL, a rebuild parses only the runs that changed.

Every extension must also be one we write (reasonCode, invalidityDate), never critical.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple, TypeVar

from cryptography import x509
from cryptography.x509.oid import CRLEntryExtensionOID

from directory import der
from directory.crl.entrywalk import Templates, WalkProblem, walk

ENTRY_EXTENSIONS = {CRLEntryExtensionOID.CRL_REASON, CRLEntryExtensionOID.INVALIDITY_DATE}
_EARLIEST = datetime(1950, 1, 1, tzinfo=UTC)
T = TypeVar("T")
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


class Layout(NamedTuple):
    """Offsets of the parts of a DER CRL; every header minimal, every length exact."""

    tbs: int  # the TBSCertList's tag
    tbs_body: int
    tbs_end: int
    revoked: int  # the revokedCertificates' tag (== entries_end when the CRL lists none)
    entries: int
    entries_end: int

    def skeleton(self, crl: bytes) -> bytes:
        """The CRL without its revokedCertificates, every other byte as it is (for ``cryptography``)."""
        return der.sequence(der.sequence(crl[self.tbs_body:self.revoked], crl[self.entries_end:self.tbs_end]),
                            crl[self.tbs_end:])


def _header(crl: bytes, i: int, limit: int, what: str) -> tuple[int, int]:
    """(start, end) of the SEQUENCE at ``i``, refused unless DER (minimal length) and within ``limit``."""
    tag, start, end = _tlv(crl, i)
    if tag != 0x30 or end > limit or crl[i:start] != der.header(0x30, end - start):
        raise EntryProblem(f"the {what} is not a DER SEQUENCE within its parent")
    return start, end


def layout(crl: bytes) -> Layout:
    """Where the TBS and the entries are in ``crl``; ``EntryProblem`` when the outer structure is not DER."""
    try:
        tbs, end = _header(crl, 0, len(crl), "CertificateList")
        if end != len(crl):
            raise EntryProblem("the CertificateList does not end where the file does")
        body, tbs_end = _header(crl, tbs, end, "TBSCertList")
        i = body
        if crl[i] == 0x02:  # version (v2; absent in v1 CRLs)
            i = _tlv(crl, i)[2]
        for _ in range(3):  # signature, issuer, thisUpdate
            i = _tlv(crl, i)[2]
        if i < tbs_end and crl[i] in (0x17, 0x18):  # nextUpdate
            i = _tlv(crl, i)[2]
        if i < tbs_end and crl[i] == 0x30:
            start, stop = _header(crl, i, tbs_end, "revokedCertificates")
            return Layout(tbs, body, tbs_end, i, start, stop)
        return Layout(tbs, body, tbs_end, i, i, i)
    except IndexError:
        raise EntryProblem("the CRL is truncated") from None


def revoked_region(crl: bytes) -> tuple[int, int]:
    """Where the revokedCertificates' elements are in a DER CRL (an empty range when there are none)."""
    shape = layout(crl)
    return shape.entries, shape.entries_end


def _parse_run(run: memoryview) -> int:
    """``cryptography`` parses a run of whole entries (in a probe CRL around it: one copy); their number."""
    when = der.time(int(_EARLIEST.timestamp()) + 86400)
    head = b"\x02\x01\x01" + _ALGORITHM + der.sequence() + when
    inner = der.header(0x30, len(run))
    body = len(head) + len(inner) + len(run)
    tbs = der.header(0x30, body)
    tail = _ALGORITHM + der.tlv(0x03, b"\x00")
    probe = b"".join((der.header(0x30, len(tbs) + body + len(tail)), tbs, head, inner, run, tail))
    try:
        return len(x509.load_der_x509_crl(probe))
    except ValueError as exc:
        raise EntryProblem(f"entries do not parse: {exc}") from None


def _walk(crl: bytes, i: int, end: int, templates: Templates) -> tuple[int, dict[bytes, int]]:
    """(entries in crl[i:end], {extension list DER: offset of an entry's serial carrying it}): the run walked
    (``entrywalk``: it follows the DER lengths, so its entries are the very ones parsed) and parsed."""
    try:
        seen = walk(crl, i, end, templates)
    except WalkProblem as exc:
        raise EntryProblem(str(exc)) from None
    return (_parse_run(memoryview(crl)[i:end]) if end > i else 0), seen


class WalkCache:
    """Walk results of the previous build's entry segments (each also parsed by ``cryptography``), by SHA-256
    of their bytes.

    A full CRL's entries are written in segments (aligned ranges of certificate ids); a revocation changes
    one, so a rebuild walks that one and hashes the others. Identical bytes walk identically: reusing the
    result is as good as walking again. ``save``/``load`` keep it beside the CRL (a dot-named file, never
    served), so a build in a new process (``annuaire crl build``, a restarted service) benefits too; a
    missing, unreadable or malformed file only means walking again."""

    MAX_SAVED_BLOCKS = 10_000  # distinct extension lists kept on disk (invalidity dates can make many)

    def __init__(self) -> None:
        self.results: dict[bytes, tuple[int, dict[bytes, int]]] = {}
        self.templates = Templates()  # the entry shapes met (not saved: learnt again from the first run walked)

    def save(self, path: Path) -> None:
        """Write the results to ``path`` atomically (no fsync: losing it costs one walk)."""
        if sum(len(blocks) for _, blocks in self.results.values()) > self.MAX_SAVED_BLOCKS:
            return
        doc = {"version": 2, "segments": [[key.hex(), count, [[b.hex(), at] for b, at in blocks.items()]]
                                          for key, (count, blocks) in self.results.items()]}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, path)

    def load(self, path: Path) -> None:
        """Read results saved by ``save``; anything else leaves the cache as it was."""
        try:
            doc = json.loads(path.read_text())
            results = {bytes.fromhex(key): (int(count), {bytes.fromhex(b): int(at) for b, at in blocks})
                       for key, count, blocks in doc["segments"]} if doc.get("version") == 2 else {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return
        if all(len(key) == 32 and count >= 0 for key, (count, _) in results.items()):
            self.results = results


def distinct_extensions(crl: bytes, segments: Sequence[int] = (),
                        cache: WalkCache | None = None) -> tuple[int, dict[bytes, int]]:
    """(number of entries, {extension list DER: offset of the first entry's serial carrying it}).

    ``segments``: lengths of consecutive runs of whole entries covering the list (the builder's chunks);
    with a ``cache``, a run whose bytes were walked by the previous call is not walked again. Every run
    walked is also parsed by ``cryptography`` (``_parse_run``)."""
    templates = cache.templates if cache is not None else Templates()
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
            n, blocks = _walk(crl, start, start + length, templates)
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
    _check_lists(seen, lambda at: _serial_at(crl, at))
    return count


class RunCheck:
    """The same checks on the runs of entries as they come from the registry, one at a time (the builder
    checks a run while the registry reads the next; the CRL's TBS is then shown to be those very bytes)."""

    def __init__(self, cache: WalkCache) -> None:
        self.cache = cache
        self.count = 0
        self._results: dict[bytes, tuple[int, dict[bytes, int]]] = {}
        self._runs: list[bytes] = []
        self._seen: dict[bytes, tuple[int, int]] = {}  # extension list -> (run, offset of the first serial)

    def add(self, run: bytes, expected: int, key: bytes | None = None) -> None:
        """Walk and parse ``run`` (unless its bytes were before); ``expected``: the registry's count of it;
        ``key``: its SHA-256, when the caller hashed it already."""
        key = key or hashlib.sha256(run).digest()
        found = self.cache.results.get(key)
        if found is None:
            found = _walk(run, 0, len(run), self.cache.templates)
        if found[0] != expected:
            raise EntryProblem(f"{found[0]} entries in a run the registry counts {expected}")
        self._results[key] = found
        self.count += found[0]
        for block, at in found[1].items():
            self._seen.setdefault(block, (len(self._runs), at))
        self._runs.append(run)

    def finish(self) -> int:
        """Parse each distinct extension list; remember this build's runs; the number of entries."""
        self.cache.results = self._results
        _check_lists(self._seen, lambda where: _serial_at(self._runs[where[0]], where[1]))
        return self.count


def _serial_at(buf: bytes, at: int) -> int:
    _, start, end = _tlv(buf, at)
    return int.from_bytes(buf[start:end], "big")


def _check_lists(seen: dict[bytes, T], serial_of: Callable[[T], int]) -> None:
    """Each distinct entry-extension list parsed by ``cryptography`` in a probe CRL, once."""
    if not seen:
        return
    blocks = list(seen)
    when = der.time(int(_EARLIEST.timestamp()) + 86400)
    entries = b"".join(der.sequence(der.integer(n + 1), when, block) for n, block in enumerate(blocks))
    tbs = der.sequence(b"\x02\x01\x01", _ALGORITHM, der.sequence(), when, der.sequence(entries))
    probe = x509.load_der_x509_crl(der.sequence(tbs, _ALGORITHM, der.tlv(0x03, b"\x00")))
    for n, entry in enumerate(probe):
        try:
            _check(entry)
        except (ValueError, x509.DuplicateExtension) as exc:
            raise EntryProblem(f"entry for serial 0x{serial_of(seen[blocks[n]]):x}: {exc}") from None


def _check(entry: x509.RevokedCertificate) -> None:
    for ext in entry.extensions:  # parses every value
        if ext.oid not in ENTRY_EXTENSIONS:
            raise ValueError(f"extension {ext.oid.dotted_string} is not one this service writes")
        if ext.critical:
            raise ValueError(f"extension {ext.oid.dotted_string} is marked critical")
        if isinstance(ext.value, x509.InvalidityDate) and ext.value.invalidity_date_utc < _EARLIEST:
            raise ValueError(f"invalidity date {ext.value.invalidity_date_utc:%Y-%m-%d} is before 1950")
