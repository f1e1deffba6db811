"""The OCSP responder's logic: which issuer, what status, pre-signed cache, live signing with load shedding.

Single-CertID requests without a nonce (RFC 5019 clients: browsers, TLS stacks) are answered from a
cache of responses signed ahead of time. Everything else (nonces, several CertIDs, cache misses) is
signed live, at most ``live_concurrency`` at a time per issuer; beyond that the answer is ``tryLater``.

Freshness: any status change (seen through the registry's change log, whichever process made it)
first removes the cached responses of that certificate, then re-signs them. A request arriving in
between is signed live from the registry, so "revoked" is never hidden behind a cached "good". A
generation counter per certificate keeps a slow live signature from putting back a stale response.

Nothing a client sends reaches another client's answer: requests are strict DER (``ocsp.request``),
every answer is keyed by (issuer, hash algorithm, serial) and carries the CertID built from those values
(``ocsp.cert_id``); a nonce is echoed, re-encoded, to its own requester only, and such answers are never
cached. What traffic fills (parsed requests, answers for hash algorithms other than SHA-1) lives in LRU
caches bounded in bytes (``[http] ocsp_request_cache``, ``ocsp_answer_cache``); the SHA-1 pre-signed
cache holds one answer per certificate of the registry, whatever the traffic.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.serialization import Encoding

from directory import cert_id
from directory.config import Config, IssuerConfig
from directory.der import DIGESTS
from directory.hsm.signer import HsmError, HsmSigner, KeySigner
from directory.httpdate import http_date
from directory.registry import Registry
from directory.revocation import REASON_CODES
from ocsp import response as resp
from ocsp.lru import ByteLru
from ocsp.request import CertId, Malformed, Request, decode_get_path, parse_request

log = logging.getLogger(__name__)
PRESIGN_HASH = "sha1"  # what RFC 5019 clients use in CertIDs
# Bytes charged per cache entry besides its key (request cache) or signed answer (answer cache): dict slot,
# LRU links, tuples, serial int (up to 20 octets). tests/test_ocsp_caches.py measures them as upper bounds.
REQUEST_ENTRY_OVERHEAD = 400
ANSWER_ENTRY_OVERHEAD = 560
# Answers ready to send (``Outcome``: the whole response, its GET headers) for the CertIDs asked about lately,
# so the answer path builds nothing: bounded, charged their body plus this (objects, header strings).
READY_CACHE = 16 * 1024 * 1024
READY_ENTRY_OVERHEAD = 2048
CONTENT_TYPE = "application/ocsp-response"


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


class IssuerResponder:
    """One issuer's responder: its signer, responder id, certificates sent along, and CertID hashes."""

    def __init__(self, issuer: IssuerConfig, hsm: HsmSigner) -> None:
        assert issuer.ocsp is not None
        self.name = issuer.name
        self.settings = issuer.ocsp
        if issuer.ocsp.signer_certificate is not None:
            responder_cert = issuer.ocsp.signer_certificate
            assert issuer.ocsp.signer_key_label is not None
            self.signer: KeySigner = hsm.key(issuer.ocsp.signer_key_label, responder_cert)
            cert_ders = [responder_cert.public_bytes(Encoding.DER)]
        else:
            responder_cert = issuer.certificate
            assert issuer.key_label is not None  # the configuration requires a delegated responder otherwise
            self.signer = hsm.key(issuer.key_label, issuer.certificate, issuer.signature_algorithm)
            cert_ders = []
        self.responder_key_hash = cert_id.key_hash(responder_cert, "sha1")
        self.certs = resp.certs_field(cert_ders)
        self.hashes = {h: cert_id.issuer_hashes(issuer.certificate, h) for h in DIGESTS}
        self.lookup_keys = {(h, name_hash, key_hash) for h, (name_hash, key_hash) in self.hashes.items()}
        self._cid_prefix = {h: cert_id.prefix(h, *hashes) for h, hashes in self.hashes.items()}
        self.live_slots = threading.BoundedSemaphore(issuer.ocsp.live_concurrency)

    def cert_id(self, hash_name: str, serial: int) -> CertId:
        """The CertID of one of this issuer's certificates, as a client would send it."""
        return CertId(hash_name, *self.hashes[hash_name], serial)

    def cert_id_der(self, hash_name: str, serial: int) -> bytes:
        """The canonical CertID bytes an answer carries (values only, never a request's bytes)."""
        return cert_id.encode(self._cid_prefix[hash_name], serial)


class Outcome:
    """What to send back: the DER, the status for metrics, and caching information for GET.

    A pre-signed answer's Outcome is built once and sent many times (``OcspResponder.answer_for``): its RFC 5019
    GET headers are made at the first GET, and only ``max-age`` again when the second changes.
    """

    __slots__ = ("_get_headers", "_headers_at", "body", "etag", "next_update", "path", "status", "this_update")

    def __init__(self, body: bytes, status: str, path: str, this_update: int | None = None,
                 next_update: int | None = None, signature_tail: bytes = b"") -> None:
        self.body, self.status, self.path = body, status, path
        self.this_update, self.next_update = this_update, next_update
        # The signed part ends with the signature: its last bytes name this exact response (same bytes
        # only for the same signed content), without hashing the whole answer on every request.
        self.etag = f'"{signature_tail.hex()}"' if signature_tail else ""
        self._headers_at = -1
        self._get_headers: dict[str, str] = {}

    def get_headers(self, now: int) -> dict[str, str]:
        """The headers of a GET answer at ``now`` (whole seconds); the caller copies them (aiohttp does)."""
        if now != self._headers_at:
            assert self.this_update is not None and self.next_update is not None
            headers = self._get_headers or {
                "Content-Type": CONTENT_TYPE, "Last-Modified": http_date(self.this_update),
                "Expires": http_date(self.next_update),
                "ETag": self.etag or '"' + hashlib.blake2b(self.body, digest_size=12).hexdigest() + '"'}
            self._get_headers = {**headers, "Cache-Control": f"max-age={max(0, self.next_update - now)}, public, "
                                                             "no-transform, must-revalidate"}
            self._headers_at = now
        return self._get_headers


def error_outcome(code: int, path: str = "error") -> Outcome:
    return Outcome(resp.error_response(code), resp.STATUS_NAMES[code], path)


class OcspResponder:
    def __init__(self, config: Config, hsm: HsmSigner, registry: Registry,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.clock = clock
        self.issuers: dict[str, IssuerResponder] = {
            i.name: IssuerResponder(i, hsm) for i in config.issuers if i.ocsp is not None}
        self._by_key = {key: r for r in self.issuers.values() for key in r.lookup_keys}
        # pre-signed SHA-1 answers, one per certificate: cache[(issuer, "sha1")][serial] = (signed part,
        # thisUpdate, nextUpdate); answers for other hash algorithms: answers[(issuer, hash, serial)]
        self.cache: dict[tuple[str, str], dict[int, tuple[bytes, int, int]]] = {
            (name, PRESIGN_HASH): {} for name in self.issuers}
        self.answers: ByteLru[tuple[str, str, int], tuple[bytes, int, int]] = ByteLru(
            config.http.ocsp_answer_cache, ANSWER_ENTRY_OVERHEAD)
        self._generation: dict[tuple[str, int], int] = {}
        # how a cacheable request arrived (POST body, GET path) -> (issuer, hash algorithm, serial)
        self.requests: ByteLru[bytes | str, tuple[IssuerResponder, str, int]] = ByteLru(
            config.http.ocsp_request_cache, REQUEST_ENTRY_OVERHEAD)
        self.ready: ByteLru[tuple[str, str, int], Outcome] = ByteLru(READY_CACHE, READY_ENTRY_OVERHEAD)
        self._dropped = 0  # moves whenever an answer is dropped or replaced (see answer_for)
        self._pending_store: list[tuple[str, str, str, int, int, bytes]] = []
        self._lock = threading.Lock()
        self.stats = OcspStats()

    # -- answering ----------------------------------------------------------------------------
    def from_cache(self, received: bytes | str) -> Outcome | Request:
        """The fast path (event loop, no I/O): a cached answer, or the parsed request for the slow path.

        ``received`` is a POST body (DER) or the raw GET path after ``/ocsp``. RFC 5019 clients send
        byte-identical requests for a certificate, so what a cacheable request (valid, one CertID, no
        echoed nonce, served issuer) parsed to is remembered under the bytes it arrived as.
        """
        known = self.requests.get(received)
        if known is not None:
            hit = self.answer_for(*known)
            if hit is not None:
                return hit
        try:
            der = decode_get_path(received) if isinstance(received, str) else received
            request = parse_request(der, 100)
        except Malformed:
            return error_outcome(resp.MALFORMED_REQUEST, "error")
        issuer = self._issuer_of(request)
        if issuer is None:
            return error_outcome(resp.UNAUTHORIZED, "error")
        if len(request.cert_ids) > issuer.settings.max_cert_ids:
            return error_outcome(resp.MALFORMED_REQUEST, "error")
        if len(request.cert_ids) == 1 and (request.nonce is None or issuer.settings.nonce == "ignore"):
            cid = request.cert_ids[0]
            self.requests.put(received, (issuer, cid.hash_name, cid.serial), len(received))
            hit = self.answer_for(issuer, cid.hash_name, cid.serial)
            if hit is not None:
                return hit
        return request

    def _cached(self, issuer: str, hash_name: str, serial: int) -> tuple[bytes, int, int] | None:
        if hash_name == PRESIGN_HASH:
            return self.cache[(issuer, PRESIGN_HASH)].get(serial)
        return self.answers.get((issuer, hash_name, serial))

    def answer_for(self, issuer: IssuerResponder, hash_name: str, serial: int) -> Outcome | None:
        """The answer held for one canonical CertID, ready to send, while it has more than a minute of validity
        left: the answer path's one look-up (whatever store holds the signed answers behind it)."""
        key = (issuer.name, hash_name, serial)
        ready = self.ready.get(key)
        if ready is None:
            dropped = self._dropped
            hit = self._cached(issuer.name, hash_name, serial)
            if hit is None:
                return None
            signed, this_update, next_update = hit
            ready = Outcome(resp.assemble(signed, issuer.certs), "successful", "presigned", this_update,
                            next_update, signed[-16:])
            self.ready.put(key, ready, len(ready.body))
            if self._dropped != dropped:  # dropped or replaced (another thread) while this one was built
                self.ready.pop(key)
        assert ready.next_update is not None
        if ready.next_update <= self.clock() + 60:
            return None
        return ready

    def answer_live(self, request: Request) -> Outcome:
        """The slow path, run on an HSM worker thread: registry lookup, signature, maybe cache."""
        issuer = self._issuer_of(request)
        if issuer is None:
            return error_outcome(resp.UNAUTHORIZED, "error")
        if not issuer.live_slots.acquire(blocking=False):
            self.stats.shed += 1
            return error_outcome(resp.TRY_LATER, "shed")
        try:
            single = len(request.cert_ids) == 1
            echo = request.nonce if issuer.settings.nonce == "echo" else None
            cacheable = single and echo is None
            gens = [self._generation.get((issuer.name, c.serial), 0) for c in request.cert_ids]
            try:
                signed, this_update, next_update, known = self._sign(issuer, request.cert_ids, echo)
            except HsmError as exc:
                log.warning("OCSP live signing for %s unavailable: %s", issuer.name, exc)
                return error_outcome(resp.TRY_LATER, "error")
            # Answers about serials the registry does not know are never cached: an import (from any
            # process) must be answerable at once.
            if cacheable and known and gens[0] == self._generation.get((issuer.name, request.cert_ids[0].serial), 0):
                self._remember(issuer, request.cert_ids[0], signed, this_update, next_update)
            return Outcome(resp.assemble(signed, issuer.certs), "successful", "live", this_update,
                           None if echo else next_update, signed[-16:])
        finally:
            issuer.live_slots.release()

    def _issuer_of(self, request: Request) -> IssuerResponder | None:
        found = {self._by_key.get((c.hash_name, c.name_hash, c.key_hash)) for c in request.cert_ids}
        if len(found) != 1:
            return None  # unknown issuer, or CertIDs of several issuers (one response has one signer)
        return found.pop()

    def _status(self, issuer: IssuerResponder, cid: CertId) -> resp.SingleStatus | None:
        """What to say about one CertID; None when the registry never saw the serial."""
        row = self.registry.status_of(issuer.name, format(cid.serial, "x"))
        if row is None:
            return None
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
        signature = issuer.signer.sign(tbs)
        signed = resp.signed_part(tbs, issuer.signer.algorithm_identifier_der, signature)
        return signed, this_update, next_update, known

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
        self._generation[key] = self._generation.get(key, 0) + 1
        self.cache[(issuer, PRESIGN_HASH)].pop(serial, None)
        for h in DIGESTS:
            self.answers.pop((issuer, h, serial))
        self._dropped += 1  # after the stores, before the ready answers: see answer_for
        for h in DIGESTS:
            self.ready.pop((issuer, h, serial))

    def _keep(self, issuer: str, hash_name: str, serial: int, entry: tuple[bytes, int, int]) -> None:
        if hash_name == PRESIGN_HASH:
            self.cache[(issuer, PRESIGN_HASH)][serial] = entry
        else:
            self.answers.put((issuer, hash_name, serial), entry, len(entry[0]))
        self._dropped += 1  # the ready answer it replaces goes (see answer_for)
        self.ready.pop((issuer, hash_name, serial))

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

        A stored answer is taken only when its CertID is the canonical one for its (issuer, hash, serial):
        a row written by anything else (an older version, a hand edit) is never served.
        """
        n = refused = 0
        margin = int(self.clock()) + 60
        for issuer, serial_hex, hash_name, this_update, next_update, body in self.registry.ocsp_load(margin):
            responder = self.issuers.get(issuer)
            if responder is None or hash_name not in responder.hashes:
                continue
            serial, signed = int(serial_hex, 16), bytes(body)
            if cert_id.of_signed_part(signed) != responder.cert_id_der(hash_name, serial):
                refused += 1
                continue
            self._keep(issuer, hash_name, serial, (signed, this_update, next_update))
            n += 1
        if refused:
            log.warning("OCSP: %d persisted responses ignored (CertID not the canonical one)", refused)
        return n

    def presigned_counts(self) -> dict[str, int]:
        """Pre-signed answers held, per served issuer."""
        return {issuer: len(entries) for (issuer, _), entries in self.cache.items()}

    def presigned_window(self, issuer: str, serial: int) -> tuple[int, int] | None:
        """(thisUpdate, nextUpdate) of the pre-signed answer held for a certificate; None when none is."""
        hit = self.cache.get((issuer, PRESIGN_HASH), {}).get(serial)
        return (hit[1], hit[2]) if hit is not None else None

    def missing(self, issuer: str) -> list[str]:
        """Serials of ``issuer`` without a usable pre-signed response."""
        cached = self.cache[(issuer, PRESIGN_HASH)]
        return [s for s in self.registry.serials(issuer) if int(s, 16) not in cached]

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
