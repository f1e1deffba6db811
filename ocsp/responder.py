"""The OCSP responder's logic: which issuer, what status, pre-signed cache, live signing with load shedding.

Single-CertID requests without a nonce (RFC 5019 clients: browsers, TLS stacks) are answered from a
cache of responses signed ahead of time. Everything else (nonces, several CertIDs, cache misses) is
signed live, at most ``live_concurrency`` at a time per issuer; beyond that the answer is ``tryLater``.

Freshness: any status change (seen through the registry's change log, whichever process made it)
first removes the cached responses of that certificate, then re-signs them. A request arriving in
between is signed live from the registry, so "revoked" is never hidden behind a cached "good". A
generation counter per certificate keeps a slow live signature from putting back a stale response.
Live answers read a certificate's status from the registry once, then from a small cache that the very
same change log empties (``STATUS_CACHE``): a nonce answer is exactly as fresh as a pre-signed one, and
the signing threads do not wait on a registry query per answer. Serials the registry does not know are
never remembered (an import, from any process, is answerable at once).

Nothing a client sends reaches another client's answer: requests are strict DER (``ocsp.request``),
every answer is keyed by (issuer, hash algorithm, serial) and carries the CertID built from those values
(``ocsp.cert_id``); a nonce is echoed, re-encoded, to its own requester only, and such answers are never
cached. What traffic fills (parsed requests, answers for hash algorithms other than SHA-1) lives in LRU
caches bounded in bytes (``[http] ocsp_request_cache``, ``ocsp_answer_cache``); the SHA-1 pre-signed
cache holds one answer per certificate of the registry, whatever the traffic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from directory import cert_id
from directory.config import Config, IssuerConfig
from directory.der import DIGESTS
from directory.hsm.signer import SAMPLED, HsmError, HsmSigner, KeySigner
from directory.registry import Registry
from directory.revocation import REASON_CODES
from ocsp import response as resp
from ocsp.lookup import PRESIGN_HASH, REQUEST_ENTRY_OVERHEAD, AnswerLookup, IssuerIdentity, Outcome, error_outcome
from ocsp.lru import ByteLru
from ocsp.request import CertId, Request
from ocsp.store import MemoryStore, PresignedStore

log = logging.getLogger(__name__)
__all__ = ["PRESIGN_HASH", "REQUEST_ENTRY_OVERHEAD", "OcspResponder", "Outcome", "error_outcome"]
# Bytes charged per answer-cache entry besides its signed answer: dict slot, LRU links, tuples, serial int
# (up to 20 octets). tests/test_ocsp_caches.py measures it as an upper bound.
ANSWER_ENTRY_OVERHEAD = 560
# Statuses of certificates asked about live: (issuer, serial) -> (status, revocation time, reason); bytes
# charged per entry (tuples, serial int, strings shared with the registry's rows), an upper bound.
STATUS_CACHE = 8 * 1024 * 1024
STATUS_ENTRY_OVERHEAD = 560  # 453 measured (tests/test_ocsp_live.py)


@dataclass
class OcspStats:
    answered: dict[tuple[str, str], int] = field(default_factory=dict)  # (status, path) -> answers
    shed: int = 0
    presigned: int = 0

    def count(self, status: str, path: str) -> None:
        """One dictionary update per answer; the totals by status and by path are summed when scraped."""
        key = (status, path)
        self.answered[key] = self.answered.get(key, 0) + 1

    @property
    def by_status(self) -> dict[str, int]:
        return self._sum(0)

    @property
    def by_path(self) -> dict[str, int]:
        return self._sum(1)

    def _sum(self, index: int) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, n in list(self.answered.items()):
            out[key[index]] = out.get(key[index], 0) + n
        return out


class LiveSlots:
    """At most ``size`` live signatures in flight, never waiting: ``take`` says no beyond (then ``tryLater``).

    A counter under a plain lock: ``threading.BoundedSemaphore`` does the same through a Python-level
    Condition, a cost paid twice per nonce answer."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.busy = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.busy >= self.size:
                return False
            self.busy += 1
            return True

    def give(self) -> None:
        with self._lock:
            if self.busy <= 0:
                raise ValueError("LiveSlots.give() without take()")
            self.busy -= 1


class IssuerResponder(IssuerIdentity):
    """One issuer's responder: its identity (``ocsp.lookup``), its signer and its live-signing slots."""

    def __init__(self, issuer: IssuerConfig, hsm: HsmSigner) -> None:
        super().__init__(issuer)
        assert issuer.ocsp is not None
        if issuer.ocsp.signer_certificate is not None:
            assert issuer.ocsp.signer_key_label is not None
            # ECDSA signatures verified by sample once the key has proven itself (``directory.hsm.keys``)
            self.signer: KeySigner = hsm.key(issuer.ocsp.signer_key_label, self.responder_cert, verification=SAMPLED)
        else:
            assert issuer.key_label is not None  # the configuration requires a delegated responder otherwise
            self.signer = hsm.key(issuer.key_label, issuer.certificate, issuer.signature_algorithm, SAMPLED)
        self.live_slots = LiveSlots(issuer.ocsp.live_concurrency)


class OcspResponder(AnswerLookup):
    """The signing side: ``AnswerLookup``'s answer path, plus live signing and keeping the held answers true.

    ``store``: where pre-signed SHA-1 answers live, given each issuer's certs field (default: this process's
    memory; ``ocsp.store.LmdbStore`` when serving processes share them).
    """

    def __init__(self, config: Config, hsm: HsmSigner, registry: Registry,
                 clock: Callable[[], float] = time.time,
                 store: Callable[[dict[str, bytes]], PresignedStore] = MemoryStore) -> None:
        self.registry = registry
        issuers = {i.name: IssuerResponder(i, hsm) for i in config.issuers if i.ocsp is not None}
        super().__init__(issuers, store({name: r.certs for name, r in issuers.items()}),  # type: ignore[arg-type]
                         config.http.ocsp_request_cache, clock)
        self.issuers: dict[str, IssuerResponder] = issuers  # type: ignore[assignment]
        # answers for hash algorithms other than SHA-1 (what traffic asks for): answers[(issuer, hash, serial)]
        self.answers: ByteLru[tuple[str, str, int], tuple[bytes, int, int]] = ByteLru(
            config.http.ocsp_answer_cache, ANSWER_ENTRY_OVERHEAD)
        self._generation: dict[tuple[str, int], int] = {}
        self.statuses: ByteLru[tuple[str, int], tuple[str, int | None, str | None]] = ByteLru(
            STATUS_CACHE, STATUS_ENTRY_OVERHEAD)
        self._pending_store: list[tuple[str, str, str, int, int, bytes]] = []
        self._lock = threading.Lock()
        self.stats = OcspStats()

    # -- answering ----------------------------------------------------------------------------
    def answer_for(self, issuer: IssuerIdentity, hash_name: str, serial: int) -> Outcome | None:
        if hash_name == PRESIGN_HASH:
            return super().answer_for(issuer, hash_name, serial)
        hit = self.answers.get((issuer.name, hash_name, serial))
        if hit is None or hit[2] <= self.clock() + 60:
            return None
        signed, this_update, next_update = hit
        return Outcome(resp.assemble(signed, issuer.certs), "successful", "presigned", this_update, next_update,
                       signed[-16:])

    def answer_live(self, request: Request) -> Outcome:
        """The slow path, run on an HSM worker thread: registry lookup, signature, maybe cache."""
        issuer = self._issuer_of(request)
        if issuer is None:
            return error_outcome(resp.UNAUTHORIZED, "error")
        if not issuer.live_slots.take():
            self.stats.shed += 1
            return error_outcome(resp.TRY_LATER, "shed")
        try:
            single = len(request.cert_ids) == 1
            echo = request.nonce if issuer.settings.nonce == "echo" else None
            cacheable = single and echo is None
            gens = [self._generation.get((issuer.name, c.serial), 0) for c in request.cert_ids]
            try:
                tbs, signature, this_update, next_update, known = self._sign_parts(issuer, request.cert_ids, echo)
            except HsmError as exc:
                log.warning("OCSP live signing for %s unavailable: %s", issuer.name, exc)
                return error_outcome(resp.TRY_LATER, "error")
            algorithm = issuer.signer.algorithm_identifier_der
            # Answers about serials the registry does not know are never cached: an import (from any
            # process) must be answerable at once.
            if cacheable and known and gens[0] == self._generation.get((issuer.name, request.cert_ids[0].serial), 0):
                self._remember(issuer, request.cert_ids[0], resp.signed_part(tbs, algorithm, signature), this_update,
                               next_update)
            # the signed part ends with the signature: its tail is the ETag, as for a held answer
            return Outcome(resp.assemble_signed(tbs, algorithm, signature, issuer.certs), "successful", "live",
                           this_update, None if echo else next_update, signature[-16:])
        finally:
            issuer.live_slots.give()

    def _status(self, issuer: IssuerResponder, cid: CertId) -> resp.SingleStatus | None:
        """What to say about one CertID; None when the registry never saw the serial."""
        key = (issuer.name, cid.serial)
        row = self.statuses.get(key)
        if row is None:
            generation = self._generation.get(key, 0)
            row = self.registry.status_of(issuer.name, format(cid.serial, "x"))
            if row is None:
                return None
            with self._lock:  # not if the certificate changed meanwhile (``invalidate`` takes the lock too)
                if generation == self._generation.get(key, 0):
                    self.statuses.put(key, row, 0)
        status, revocation_time, reason = row
        cid_der = issuer.cert_id_der(cid.hash_name, cid.serial)
        if status == "good":
            return resp.SingleStatus(cid_der, "good")
        return resp.SingleStatus(cid_der, "revoked", revocation_time, REASON_CODES[reason] if reason else None)

    @staticmethod
    def _never_issued(issuer: IssuerResponder, cid: CertId) -> tuple[resp.SingleStatus, bool]:
        """(status, extended-revoke needed): ``unknown``, or RFC 6960 §2.2 "revoked" when configured."""
        cid_der = issuer.cert_id_der(cid.hash_name, cid.serial)
        if issuer.settings.unknown_status == "revoked":
            return resp.SingleStatus(cid_der, "revoked", 0, REASON_CODES["certificateHold"]), True
        return resp.SingleStatus(cid_der, "unknown"), False

    def _sign(self, issuer: IssuerResponder, cert_ids: tuple[CertId, ...],
              nonce: bytes | None) -> tuple[bytes, int, int, bool]:
        """(signed part, thisUpdate, nextUpdate, whether every serial is known to the registry)."""
        tbs, signature, this_update, next_update, known = self._sign_parts(issuer, cert_ids, nonce)
        return resp.signed_part(tbs, issuer.signer.algorithm_identifier_der, signature), this_update, next_update, known

    def _sign_parts(self, issuer: IssuerResponder, cert_ids: tuple[CertId, ...],
                    nonce: bytes | None) -> tuple[bytes, bytes, int, int, bool]:
        """(ResponseData, its signature, thisUpdate, nextUpdate, whether every serial is known)."""
        now = int(self.clock())
        this_update, next_update = now, now + issuer.settings.validity
        singles, extended, known = [], False, True
        for cid in cert_ids:
            status = self._status(issuer, cid)
            if status is None:
                known = False
                status, ext = self._never_issued(issuer, cid)
                extended = extended or ext
            singles.append(resp.single_response(status, this_update, next_update))
        tbs = resp.response_data(issuer.responder_key_hash, now, singles, nonce, extended)
        return tbs, issuer.signer.sign(tbs), this_update, next_update, known

    def _remember(self, issuer: IssuerResponder, cid: CertId, signed: bytes, this_update: int,
                  next_update: int) -> None:
        self._keep(issuer.name, cid.hash_name, cid.serial, (signed, this_update, next_update))
        with self._lock:
            self._pending_store.append((issuer.name, format(cid.serial, "x"), cid.hash_name, this_update,
                                        next_update, signed))

    # -- keeping the cache true and fresh --------------------------------------------------------
    def invalidate(self, issuer: str, serial_hex: str) -> None:
        """Forget every cached response of a certificate whose status changed (before re-signing it)."""
        if issuer not in self.issuers:
            return
        serial = int(serial_hex, 16)
        key = (issuer, serial)
        with self._lock:
            self._generation[key] = self._generation.get(key, 0) + 1
            self.statuses.pop(key)
        self.store.pop(issuer, serial)
        for h in DIGESTS:
            self.answers.pop((issuer, h, serial))
        self.ready.pop(key)  # this process's ready copy (a look-up checks it against the store anyway)

    def _keep(self, issuer: str, hash_name: str, serial: int, entry: tuple[bytes, int, int]) -> None:
        if hash_name == PRESIGN_HASH:
            self.store.put(issuer, serial, *entry)
        else:
            self.answers.put((issuer, hash_name, serial), entry, len(entry[0]))

    def presign(self, issuer: str, serial_hex: str, hash_name: str = PRESIGN_HASH) -> bool:
        """Sign (blocking, HSM thread) the single-CertID response of one certificate and cache it."""
        responder = self.issuers.get(issuer)
        if responder is None:
            return False
        serial = int(serial_hex, 16)
        gen = self._generation.get((issuer, serial), 0)
        cid = responder.cert_id(hash_name, serial)
        signed, this_update, next_update, known = self._sign(responder, (cid,), None)
        if not known or gen != self._generation.get((issuer, serial), 0):
            return False
        self._remember(responder, cid, signed, this_update, next_update)
        self.stats.presigned += 1
        return True

    def load_persisted(self) -> int:
        """Fill the caches from the registry (valid responses signed after each certificate's last change).

        A stored answer is taken only when its CertID is the canonical one for its (issuer, hash, serial)
        and its responderID names the responder key configured now: a row written by anything else (an
        older version, a hand edit, the responder key or certificate before a change) is never served; the
        pre-signing loop signs those certificates again.
        """
        n = refused = stale = 0
        margin = int(self.clock()) + 60
        batch: list[tuple[str, int, bytes, int, int]] = []
        put_many = getattr(self.store, "put_many", None)
        for issuer, serial_hex, hash_name, this_update, next_update, body in self.registry.ocsp_load(margin):
            responder = self.issuers.get(issuer)
            if responder is None or hash_name not in responder.hashes:
                continue
            serial, signed = int(serial_hex, 16), bytes(body)
            if cert_id.of_signed_part(signed) != responder.cert_id_der(hash_name, serial):
                refused += 1
                continue
            if cert_id.responder_of_signed_part(signed) != responder.responder_id:
                stale += 1
                continue
            if put_many is not None and hash_name == PRESIGN_HASH:
                batch.append((issuer, serial, signed, this_update, next_update))
                if len(batch) >= 10_000:
                    put_many(batch)
                    batch = []
            else:
                self._keep(issuer, hash_name, serial, (signed, this_update, next_update))
            n += 1
        if batch:
            put_many(batch)  # type: ignore[misc]
        if refused:
            log.warning("OCSP: %d persisted responses ignored (CertID not the canonical one)", refused)
        if stale:
            log.warning("OCSP: %d persisted responses ignored (signed by another responder key than the one "
                        "configured now): they are signed again", stale)
        return n

    def presigned_counts(self) -> dict[str, int]:
        """Pre-signed answers held, per served issuer."""
        return self.store.counts()

    def presigned_window(self, issuer: str, serial: int) -> tuple[int, int] | None:
        """(thisUpdate, nextUpdate) of the pre-signed answer held for a certificate; None when none is."""
        return self.store.window(issuer, serial) if issuer in self.issuers else None

    def missing(self, issuer: str) -> list[str]:
        """Serials of ``issuer`` without a usable pre-signed response."""
        window = self.store.window
        return [s for s in self.registry.serials(issuer) if window(issuer, int(s, 16)) is None]

    def due_for_refresh(self, issuer: str) -> list[tuple[str, str]]:
        """Responses past half their validity (re-signed ahead of expiry)."""
        validity = self.issuers[issuer].settings.validity
        # answers for other hash algorithms are renewed while still asked for (in the LRU), not forever
        return [(serial_hex, h) for serial_hex, h in self.registry.ocsp_due(issuer, int(self.clock()) - validity // 2)
                if h == PRESIGN_HASH or (issuer, h, int(serial_hex, 16)) in self.answers]

    def flush(self) -> int:
        """Persist responses signed since the last flush (called from a worker thread)."""
        with self._lock:
            rows, self._pending_store = self._pending_store, []
        self.registry.ocsp_store(rows)
        return len(rows)
