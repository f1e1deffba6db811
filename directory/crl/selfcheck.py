"""The self-check: a built CRL file read back as a relying party would, refused unless everything holds.

It is the one gate between a signed file and its publication, so it lives apart from the build it judges:
it trusts nothing of the build but what it compares the file against (``Built``: the number allocated, the
entries counted, the TBS's length and the digest the HSM signed, the runs of entries already checked).

- ``cryptography`` parses the file without its entries (``Layout.skeleton``): a full CRL's entries were
  walked and parsed as they were read (``entrycheck.RunCheck``), a delta's are walked here;
- the TBS is hashed again from the file (not the build's digest reused) and must be the digest signed,
  which shows the file's entries are those very bytes; the signature is verified under the CA's key;
- issuer, algorithm, number (above the newest published), entry count, thisUpdate and nextUpdate;
- a CRL that fails is never published (the builder logs it, counts it and records it 'failed').

The SHA-256 passes read the file again on other threads (without the GIL, a block at a time): the file is
mapped for the parse, and only the pages parsed are ever in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from cryptography import x509

from directory import der
from directory.crl.entrycheck import WalkCache, check_entry_extensions, layout
from directory.hsm.errors import SignatureCheckFailed

if TYPE_CHECKING:
    from directory.hsm.keys import KeySigner


class CrlBuildError(RuntimeError):
    """A CRL failed its self-check or could not be written; the previous CRL stays published."""


class Built(NamedTuple):
    """What the build says the file holds (what the file is checked against)."""

    number: int  # the cRLNumber allocated
    entries: int  # the registry's count
    tbs_size: int
    digest: bytes  # of the TBS, signed by the HSM
    segments: tuple[int, ...]  # lengths of the runs of whole entries written (for the entry walk)
    checked: int | None  # entries walked and parsed while read (full CRLs), None: to walk here


def self_check(path: Path, built: Built, signer: KeySigner, issuer_name: bytes, previous: int | None,
               walks: WalkCache, walk_file: Path, now: Callable[[], float]) -> str:
    """The file's SHA-256 (hex) once everything holds, else ``CrlBuildError``. ``previous``: the number of the
    newest CRL of this kind published; ``walks`` the entry walks, saved to ``walk_file`` for the next build."""
    entries = built.entries
    with open(path, "rb") as fh:  # unmapped when the last view of it goes
        data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    with ThreadPoolExecutor(2, thread_name_prefix="crl-check") as hashing:
        file_sha256 = hashing.submit(sha256_of, blocks(path, 0, len(data)))
        try:
            shape = layout(data)
            crl = x509.load_der_x509_crl(shape.skeleton(data))
        except ValueError as exc:
            raise CrlBuildError(f"does not parse back: {exc}") from None
        # The signature, checked over the TBS bytes exactly as they are in the file (hashed again from what
        # was read, not reusing the build's digest) with the CA certificate's public key.
        tail = signer.algorithm_identifier_der + der.tlv(0x03, b"\x00" + crl.signature)
        if shape.tbs_end - shape.tbs != built.tbs_size or data[shape.tbs_end:] != tail:
            raise CrlBuildError("the file is not laid out as built (TBS, algorithm, signature)")
        digest = hashing.submit(signer.algorithm.digest, blocks(path, shape.tbs, shape.tbs_end))
        if crl.signature_algorithm_oid.dotted_string != signer.algorithm_identifier["algorithm"].dotted:
            raise CrlBuildError("signature algorithm differs from the signer's")
        if crl.issuer.public_bytes() != issuer_name:
            raise CrlBuildError("issuer does not match the CA certificate's subject")
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        if number != built.number:
            raise CrlBuildError(f"cRLNumber {number} is not the allocated {built.number}")
        if previous is not None and number <= previous:
            raise CrlBuildError(f"cRLNumber {number} is not greater than the published {previous}")
        if built.checked is not None:  # checked as read, and the TBS is shown below to be those very bytes
            walked = built.checked
            if shape.entries_end - shape.entries != sum(built.segments):
                raise CrlBuildError("the entries in the file are not the ones read")
        else:
            try:  # every entry parsed, and its extensions, as a relying party's parser reads them
                walked = check_entry_extensions(data, built.segments, walks)
            except (ValueError, IndexError) as exc:
                raise CrlBuildError(f"an entry does not parse back: {exc}") from None
        if walked != entries:
            raise CrlBuildError(f"{walked} entries in the file, the registry has {entries}")
        with contextlib.suppress(OSError):  # for the next build, in whatever process (a cache: best effort)
            walks.save(walk_file)
        if digest.result() != built.digest:  # SHA-256: the file's TBS is byte for byte the one built and signed
            raise CrlBuildError("the TBS in the file is not the one signed")
        try:
            signer.verify_digest(crl.signature, digest.result())
        except SignatureCheckFailed:
            raise CrlBuildError("signature does not verify under the CA certificate") from None
        at = int(now())
        next_update = crl.next_update_utc
        if next_update is None or int(next_update.timestamp()) <= at:
            raise CrlBuildError("nextUpdate is not in the future")
        if int(crl.last_update_utc.timestamp()) > at + 1:
            raise CrlBuildError("thisUpdate is in the future")
        return file_sha256.result().hex()


def sha256_of(chunks: Iterator[memoryview]) -> bytes:
    hasher = hashlib.sha256()
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.digest()


def blocks(path: Path, start: int, end: int, size: int = 1 << 20) -> Iterator[memoryview]:
    """Bytes ``start`` to ``end`` of the file at ``path``, read into one buffer a block at a time (each block
    is to be used before the next is asked for)."""
    buffer = memoryview(bytearray(size))
    with open(path, "rb", buffering=0) as fh:
        fh.seek(start)
        while start < end:
            got = fh.readinto(buffer[:min(size, end - start)])
            if not got:
                raise CrlBuildError("the file is shorter than it was written")
            yield buffer[:got]
            start += got
