"""Building, self-checking and publishing one issuer's CRLs (full, delta, partitions).

The flow for one CRL, Boulder-style (each step with a clear failure story):
1. allocate the next cRLNumber and record the CRL as 'building' (one registry transaction: a number is
   never reused, a failed build burns it); `crl build`'s first CRL is read first, while the command starts,
   and its number allocated inside that read's transaction (``readahead``);
2. in one read snapshot, fetch the entries' stored DER in a few large chunks (concatenated inside the
   registry, no per-entry Python object: ``entryread``); each chunk is walked and parsed by ``cryptography``
   with every entry extension (``entrycheck``; a chunk an earlier build checked, same SHA-256, is not again, even
   across processes) while the next is read; the TBS is those chunks between its head and extensions,
   hashed on another thread from the moment the last chunk is read (its lengths then known) while that chunk
   is checked, and written to a temporary file meanwhile (``crlfile``); only the digest goes to the HSM,
   whose session and login were prepared during the read;
3. the outer header and the signature written around it (the TBS was fsynced as soon as written); the last
   fsync runs while step 4 reads the file back, and is waited for before step 5;
4. self-check (``selfcheck``): the file read back, parsed by ``cryptography`` (without its entries, checked
   in step 2: its TBS hashed again must be the digest signed), the signature verified under the CA
   certificate, issuer, number, entry count, times; a CRL that fails is never published (logged, counted,
   'failed');
5. under a per-issuer file lock, refuse to go backwards (a newer CRL already published), then rename
   into place atomically, keep it in the archive, and record it as 'published'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from cryptography import x509

from directory import der
from directory.config import Config, IssuerConfig
from directory.crl import readahead
from directory.crl.crlfile import CrlFile
from directory.crl.entrycheck import WalkCache
from directory.crl.entryread import RunReader, check_runs
from directory.crl.install import CrlFolder
from directory.crl.selfcheck import Built, CrlBuildError, self_check
from directory.publication import Target, crl_dir, crl_url, delta_target, full_crl_name, targets_of
from directory.registry import Registry
from directory.registry.store import CrlRecord

if TYPE_CHECKING:  # the PKCS#11 stack is imported by whoever opens the HSM (``crl build``: while it reads)
    from directory.hsm.keys import KeySigner
    from directory.hsm.signer import HsmSigner

log = logging.getLogger(__name__)


def publishers_for(config: Config, hsm: Future[HsmSigner], registry: Registry,
                   clock: Callable[[], float] = time.time,
                   on_published: Callable[[PublishedCrl], None] | None = None) -> dict[str, CrlPublisher]:
    """One publisher per configured issuer whose key is here, signing with it (offline issuers have none:
    their CRL is published, ``directory.crl.publish``). ``hsm`` may still be opening (``crl build`` reads
    its first entries meanwhile; an open one: ``opened``): each key is made once it is open, and waited for
    when a build first needs it, its errors (or the opening's) raised there."""
    return {issuer.name: CrlPublisher(issuer, _key_when_open(hsm, issuer), registry, crl_dir(config),
                                      config.http.base_url, clock, on_published)
            for issuer in config.issuers if issuer.key_label is not None}


def opened(hsm: HsmSigner) -> Future[HsmSigner]:
    """An HSM already open, as ``publishers_for`` takes it."""
    done: Future[HsmSigner] = Future()
    done.set_result(hsm)
    return done


def _key_when_open(hsm: Future[HsmSigner], issuer: IssuerConfig) -> Future[KeySigner]:
    """The issuer's key signer once ``hsm`` is open (or the error that opening it, or the key, raised)."""
    key: Future[KeySigner] = Future()

    def made(done: Future[HsmSigner]) -> None:
        try:
            assert issuer.key_label is not None
            key.set_result(done.result().key(issuer.key_label, issuer.certificate, issuer.signature_algorithm))
        except BaseException as exc:  # handed to whoever waits for the key
            key.set_exception(exc)

    hsm.add_done_callback(made)  # at once when it is open already
    return key


# The records of a build are NamedTuples, not dataclasses: a dataclass compiles its methods with exec at every
# start (~0.6 ms each here, of a `crl build`'s 33 on its way), a NamedTuple one constructor.
class PublishedCrl(NamedTuple):
    target: Target
    record: CrlRecord
    path: Path
    entries: int
    size: int
    sha256: str
    this_update: int
    next_update: int
    seconds: float


class _Tbs(NamedTuple):
    digest: bytes  # of the TBS, for the HSM (b"" until hashed)
    entries: int
    size: int
    change_seq: int
    segments: tuple[int, ...]  # lengths of the runs of whole entries written (for the entry walk)
    pieces: list[bytes]  # the TBS, in order (emptied once written)
    checked: int | None  # entries walked and parsed while read (full CRLs: ``RunCheck``)
    hashing: Future[bytes] | None  # the digest, being computed since the last chunk was read (full CRLs)


class CrlStats:
    """CRLs published and failed by one publisher (metrics)."""

    def __init__(self) -> None:
        self.published = 0
        self.failed = 0


class CrlPublisher:
    """All CRLs of one issuer."""

    def __init__(self, issuer: IssuerConfig, signer: Future[KeySigner], registry: Registry, crl_dir: Path,
                 base_url: str, clock: Callable[[], float] = time.time,
                 on_published: Callable[[PublishedCrl], None] | None = None) -> None:
        self.issuer = issuer
        self.settings = issuer.crl
        self._signer = signer
        self.registry = registry
        self.dir = crl_dir
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.on_published = on_published
        self.on_stage: Callable[[str], None] | None = None  # "ac-x.crl number 12: signing" (CLI progress)
        self.read_ahead: readahead.ReadAhead | None = None  # `crl build`: its first CRL's entries, being read already
        self.stats = CrlStats()
        self._walks: dict[str, WalkCache] = {}  # per CRL file: the entry walk of its previous build
        self.folder = CrlFolder(crl_dir, issuer.name, issuer.crl.archive)
        self.folder.remove_stale_temporaries()
        self._floor_applied = not issuer.crl.number_floor
        cert = issuer.certificate
        self._issuer_name = cert.subject.public_bytes()
        self._public_key = cert.public_key()
        try:
            self._key_id = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            self._key_id = x509.SubjectKeyIdentifier.from_public_key(self._public_key).digest  # type: ignore[arg-type]

    @property
    def signer(self) -> KeySigner:
        """The issuer's key (waited for when the HSM is still opening: first needed once the entries are read)."""
        return self._signer.result()

    # -- targets (``publication``) -------------------------------------------------------------
    def url(self, filename: str) -> str:
        return crl_url(self.base_url, filename)

    def full_targets(self) -> list[Target]:
        return [t for t in targets_of(self.issuer) if t.kind == "full"]

    def delta_target(self) -> Target:
        return delta_target(self.issuer.name)

    # -- building ----------------------------------------------------------------------------
    def publish_all(self, rebase: bool = True) -> list[PublishedCrl]:
        """Full CRL(s), then the delta when deltas are on: against the new full CRL (``rebase``: a scheduled
        build), or against the base the previous delta used (a rebuild for a revocation: clients still
        hold that base, and a delta applies to any complete CRL numbered at least its base, RFC 5280)."""
        out = [self.publish(t) for t in self.full_targets()]
        if self.settings.delta:
            out.append(self.publish(self.delta_target(), rebase))
        return out

    def delta_base(self, rebase: bool) -> CrlRecord | None:
        """The full CRL a new delta lists the changes since: the newest (``rebase``), else the previous
        delta's base while it is still published and unexpired."""
        newest = self.registry.crl_latest(self.issuer.name, "main", "full")
        previous = self.registry.crl_latest(self.issuer.name, "main", "delta")
        if rebase or newest is None or previous is None or previous.base_number is None:
            return newest
        kept = self.registry.crl_published(self.issuer.name, "main", "full", previous.base_number)
        if kept is None or kept.next_update <= self.clock():
            return newest
        return kept

    def publish(self, target: Target, rebase: bool = False) -> PublishedCrl:
        """Build, sign, check and install one CRL (a delta against ``delta_base(rebase)``)."""
        started = time.monotonic()
        login = ThreadPoolExecutor(1, thread_name_prefix="crl-hsm")  # the HSM's login while the entries are read
        try:
            ready = login.submit(lambda: self.signer.prepare())
            return self._publish(target, rebase, started, ready)
        finally:
            login.shutdown()

    def _publish(self, target: Target, rebase: bool, started: float, ready: Future[None]) -> PublishedCrl:
        ahead, self.read_ahead = self.read_ahead, None  # used by one build at most, the first
        ahead = readahead.usable(ahead, self.registry.path, self.issuer.name, self.settings.keep_expired, target)
        now = ahead.now if ahead is not None else int(self.clock())
        validity = self.settings.delta_validity if target.kind == "delta" else self.settings.validity
        base: CrlRecord | None = None
        if target.kind == "delta":
            base = self.delta_base(rebase)
            if base is None:
                raise CrlBuildError(f"{self.issuer.name}: no published full CRL to base a delta on")
        highest = self.folder.highest_archived(t.filename for t in targets_of(self.issuer) if t.scope == target.scope)
        if highest and self.registry.crl_raise_number(self.issuer.name, target.scope, highest):
            log.warning("%s: CRL number %d is on disk but the registry was behind it (restored from a backup?); "
                        "numbering continues after it", target.filename, highest, extra={"issuer": self.issuer.name})
        if not self._floor_applied and target.scope == "main":
            if self.registry.crl_raise_number(self.issuer.name, "main", self.settings.number_floor):
                log.info("%s: CRL numbers continue after %d ([issuers.crl] number_floor)", self.issuer.name,
                         self.settings.number_floor, extra={"issuer": self.issuer.name})
            self._floor_applied = True
        early = None
        if ahead is not None:
            early = readahead.number_in(ahead, self.registry, self.issuer.name, target, now, validity,
                                        self._walk_cache(target.filename), self.stats, self.on_stage)
        if early is not None:
            record, read = early
            spent = [("reading ahead", read.seconds), ("numbering", time.monotonic() - started - read.seconds)]
        else:
            if ahead is not None:  # not used: dated when numbered, as any build (not before a CRL numbered meanwhile)
                now = int(self.clock())
            record, read = self.registry.crl_allocate(self.issuer.name, target.scope, target.kind, now,
                                                      now + validity, base.number if base else None), None
            spent = [("numbering", time.monotonic() - started)]
        crl_tmp = self.folder.temporary(target.filename, record.number)

        times = [("", time.monotonic())]  # where a build's time goes (logged at DEBUG)

        def stage(name: str, text: str) -> None:
            times.append((name, time.monotonic()))
            if self.on_stage is not None:
                self.on_stage(f"{target.filename} number {record.number}: {text}")

        try:
            stage("reading", "reading entries")
            tbs = self._tbs(target, record, base, read)
            # the TBS written to the file (on a thread) while it is hashed (a full CRL's on the hashing thread
            # since its last chunk was read, a delta's here), without the GIL both
            with CrlFile(crl_tmp, tbs.pieces, tbs.size, len(self.signer.algorithm_identifier_der) + 3 + 72) as out:
                digest = tbs.hashing.result() if tbs.hashing is not None else self._digest(tbs.pieces)
                tbs = tbs._replace(digest=digest)
                stage("signing", f"signing ({tbs.entries} entries)")
                ready.result()  # the signer prepared (its error, if any, is the one signing would raise)
                # the TBS again for a token that only signs with a hashing mechanism (it then reads it all)
                signature = self.signer.sign_digest(tbs.digest, source=lambda: iter(tbs.pieces))
                stage("writing", "writing")
                size = out.finish(self.signer.algorithm_identifier_der + der.tlv(0x03, b"\x00" + signature))
                stage("checking", f"checking ({size} bytes)")
                sha256 = self._self_check(target, record, crl_tmp, tbs)
                out.synced()  # fsynced while checked: on disk before it is installed
            stage("installing", "installing")
            published = self._install(target, record, crl_tmp, tbs, size, sha256, started)
            times.append(("", time.monotonic()))
            log.debug("%s number %d: %s", target.filename, record.number, ", ".join(
                [f"{name} {seconds:.3f} s" for name, seconds in spent]
                + [f"{name} {end - at:.3f} s" for (name, at), (_, end) in itertools.pairwise(times[1:])]))
        except Exception as exc:
            self.stats.failed += 1
            log.error("CRL %s number %d not published: %s", target.filename, record.number, exc)
            with contextlib.suppress(Exception):
                self.registry.crl_finish(record, "failed", error=f"{type(exc).__name__}: {exc}"[:500])
            raise CrlBuildError(f"{target.filename} number {record.number}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                crl_tmp.unlink()
        return published

    def _extensions(self, target: Target, record: CrlRecord, base: CrlRecord | None) -> bytes:
        exts = [der.authority_key_identifier(self._key_id), der.crl_number(record.number)]
        if target.kind == "delta":
            assert base is not None
            exts.append(der.delta_crl_indicator(base.number))
        if target.partition is not None:
            exts.append(der.issuing_distribution_point(self.url(target.filename)))
        elif self.settings.issuing_distribution_point:
            exts.append(der.issuing_distribution_point(self.url(full_crl_name(self.issuer.name))))
        if target.kind == "full" and target.scope == "main" and self.settings.delta:
            exts.append(der.freshest_crl(self.url(self.delta_target().filename)))
        if self.settings.keep_expired:
            not_before = int(self.issuer.certificate.not_valid_before_utc.timestamp())
            exts.append(der.expired_certs_on_crl(not_before))
        return der.tlv(0xA0, der.sequence(*exts))

    def _tbs(self, target: Target, record: CrlRecord, base: CrlRecord | None,
             read: readahead.Read | None = None) -> _Tbs:
        """The TBSCertList as pieces (head, the registry's entry chunks as they are, extensions); a full CRL's
        entries checked (``read``: ahead, in the snapshot its number was allocated in) and its digest under way
        (``entryread``), a delta's not yet."""
        cutoff = None if self.settings.keep_expired else record.this_update
        exts = self._extensions(target, record, base)

        def frame(chunks: list[bytes], entries: int) -> list[bytes]:
            """The TBS around the entries: its header, head and the entries' header, the chunks, the extensions."""
            entries_len = sum(map(len, chunks))
            head = (b"\x02\x01\x01" + self.signer.algorithm_identifier_der + self._issuer_name
                    + der.time(record.this_update) + der.time(record.next_update))
            revoked_header = der.header(0x30, entries_len) if entries else b""  # never an empty SEQUENCE
            body_len = len(head) + len(revoked_header) + entries_len + len(exts)
            pieces = [der.header(0x30, body_len) + head + revoked_header, *chunks, exts]
            size, expected = sum(map(len, pieces)), len(der.header(0x30, body_len)) + body_len
            if size != expected:
                raise CrlBuildError(f"registry changed the entries under the snapshot ({size} != {expected} bytes)")
            return pieces

        if read is not None:
            pieces = frame(read.chunks, read.entries)
            hashing = ThreadPoolExecutor(1, thread_name_prefix="crl-hash")
            digest = hashing.submit(self._digest, pieces)  # the file written meanwhile (``_publish``)
            hashing.shutdown(wait=False)
            return _Tbs(b"", read.entries, sum(map(len, pieces)), read.change_seq, tuple(map(len, read.chunks)),
                        pieces, read.checked, digest)
        checked, hashing_tbs = None, None
        with self.registry.crl_snapshot(self.issuer.name) as snap:
            if target.kind == "delta":
                assert base is not None
                chunks = snap.delta_entries(base.change_seq, record.this_update)
                entries, pieces = len(chunks), frame(chunks, len(chunks))
            else:
                reader = RunReader(lambda: snap.full_entry_runs(cutoff, target.partition), frame, self._digest)
                entries, checked = check_runs(reader, self._walk_cache(target.filename))
                assert reader.tbs is not None
                pieces, hashing_tbs = reader.tbs
            change_seq = snap.change_seq
        segments = tuple(map(len, pieces[1:-1])) if target.kind == "full" else ()
        return _Tbs(b"", entries, sum(map(len, pieces)), change_seq, segments, pieces, checked, hashing_tbs)

    def _digest(self, pieces: list[bytes]) -> bytes:
        hasher = self.signer.algorithm.new_hash()
        for piece in pieces:
            hasher.update(piece)  # large pieces: hashed without the GIL
        return hasher.digest()

    def _self_check(self, target: Target, record: CrlRecord, path: Path, tbs: _Tbs) -> str:
        """The file read back and checked against what was built (``selfcheck``); its SHA-256."""
        previous = self.registry.crl_latest(self.issuer.name, target.scope, target.kind)
        built = Built(record.number, tbs.entries, tbs.size, tbs.digest, tbs.segments, tbs.checked)
        return self_check(path, built, self.signer, self._issuer_name, previous.number if previous else None,
                          self._walk_cache(target.filename), self.dir / f".{target.filename}.walk", self.clock)

    def _walk_cache(self, filename: str) -> WalkCache:
        """The entry walks of the previous build of ``filename`` (from this process, else from disk)."""
        cache = self._walks.get(filename)
        if cache is None:
            cache = self._walks[filename] = WalkCache()
            cache.load(self.dir / f".{filename}.walk")
        return cache

    def _install(self, target: Target, record: CrlRecord, tmp: Path, tbs: _Tbs, size: int, sha256: str,
                 started: float) -> PublishedCrl:
        with self.folder.lock():
            latest = self.registry.crl_latest(self.issuer.name, target.scope, target.kind)
            if latest is not None and latest.number >= record.number:
                raise CrlBuildError(f"a newer CRL (number {latest.number}) was published meanwhile")
            final = self.folder.install(tmp, target.filename, record.number)
            data = final.read_bytes() if self.registry.keeps_crl_bytes else None
            self.registry.crl_finish(record, "published", tbs.change_seq, tbs.entries, size, sha256, data=data)
        self.folder.prune(target.filename)
        record = dataclasses.replace(record, state="published", change_seq=tbs.change_seq, entries=tbs.entries,
                                     size=size, sha256=sha256)
        published = PublishedCrl(target, record, final, tbs.entries, size, sha256, record.this_update,
                                 record.next_update, time.monotonic() - started)
        self.stats.published += 1
        log.info("published %s number %d: %d entries, %d bytes, %.3f s", target.filename, record.number,
                 tbs.entries, size, published.seconds)
        if self.on_published is not None:
            self.on_published(published)
        return published
