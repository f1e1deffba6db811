"""The answer path without the HSM: which issuer a request is for, and the answer held for its CertID.

Shared by the responder (``ocsp.responder``: the process that signs) and the serving processes of
``[http] workers`` (``directory/service/worker.py``), which answer what is held and hand the rest to the
main process. Neither opens the HSM here: an issuer's identity (CertID hashes, responder id, the
certificates its answers carry) comes from the configuration's certificates alone.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.serialization import Encoding

from directory import cert_id
from directory.config import Config, IssuerConfig
from directory.der import DIGESTS
from directory.httpdate import http_date
from ocsp import response as resp
from ocsp.lru import ByteLru
from ocsp.nonced import NonceShapes
from ocsp.request import CertId, Malformed, Request, decode_get_path, parse_request_located
from ocsp.store import PresignedStore

PRESIGN_HASH = "sha1"  # what RFC 5019 clients use in CertIDs
# Bytes charged per request-cache entry besides its key: dict slot, LRU links, tuple, serial int (up to 20
# octets). tests/test_ocsp_caches.py measures it as an upper bound.
REQUEST_ENTRY_OVERHEAD = 400
# Answers ready to send (``Outcome``: the whole response, its GET headers once asked) for the CertIDs asked
# about lately, each checked against the store at every look-up (its signature tail), so a dropped or
# re-signed answer is never served from here. Charged their body plus this (objects, header strings).
READY_CACHE = 16 * 1024 * 1024
READY_ENTRY_OVERHEAD = 2048
CONTENT_TYPE = "application/ocsp-response"
UNCACHED_HEADERS = {"Content-Type": CONTENT_TYPE, "Cache-Control": "no-cache, no-store"}  # POST, errors, nonces


class IssuerIdentity:
    """One served issuer as requests name it and as its answers name their signer."""

    def __init__(self, issuer: IssuerConfig) -> None:
        assert issuer.ocsp is not None
        self.name = issuer.name
        self.settings = issuer.ocsp
        if issuer.ocsp.signer_certificate is not None:
            responder_cert = issuer.ocsp.signer_certificate
            cert_ders = [responder_cert.public_bytes(Encoding.DER)]
        else:
            responder_cert = issuer.certificate
            cert_ders = []
        self.responder_cert = responder_cert
        self.responder_key_hash = cert_id.key_hash(responder_cert, "sha1")
        self.responder_id = cert_id.responder_id(self.responder_key_hash)  # as its answers' ResponseData has it
        self.certs = resp.certs_field(cert_ders)
        self.hashes = {h: cert_id.issuer_hashes(issuer.certificate, h) for h in DIGESTS}
        self.lookup_keys = {(h, name_hash, key_hash) for h, (name_hash, key_hash) in self.hashes.items()}
        self._cid_prefix = {h: cert_id.prefix(h, *hashes) for h, hashes in self.hashes.items()}

    def cert_id(self, hash_name: str, serial: int) -> CertId:
        """The CertID of one of this issuer's certificates, as a client would send it."""
        return CertId(hash_name, *self.hashes[hash_name], serial)

    def cert_id_der(self, hash_name: str, serial: int) -> bytes:
        """The canonical CertID bytes an answer carries (values only, never a request's bytes)."""
        return cert_id.encode(self._cid_prefix[hash_name], serial)


class Outcome:
    """What to send back: the DER, the status for metrics, and caching information for GET.

    A pre-signed answer's Outcome is built once and sent many times (``AnswerLookup.answer_for`` keeps it
    ready): its RFC 5019 GET headers are made at the first GET, and only ``max-age`` again when the second
    changes.
    """

    __slots__ = ("_get_headers", "_headers_at", "_wire_get", "_wire_get_at", "body", "etag",
                 "next_update", "path", "status", "this_update", "wire_length")

    def __init__(self, body: bytes, status: str, path: str, this_update: int | None = None,
                 next_update: int | None = None, signature_tail: bytes = b"") -> None:
        self.body, self.status, self.path = body, status, path
        self.this_update, self.next_update = this_update, next_update
        # The signed part ends with the signature: its last bytes name this exact response (same bytes
        # only for the same signed content), without hashing the whole answer on every request.
        self.etag = f'"{signature_tail.hex()}"' if signature_tail else ""
        self._headers_at = -1
        self._get_headers: dict[str, str] = {}
        self._wire_get_at = -1
        self._wire_get = b""
        self.wire_length = b"Content-Length: %d\r\n" % len(body)  # its header line, as aiohttp writes it

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

    def wire_head(self, now: int, get: bool) -> bytes:
        """The status line and the headers ``get_headers`` (GET) or ``UNCACHED_HEADERS`` give, as aiohttp writes
        them: for ``ocsp.direct``, which writes the response itself."""
        if get and self.next_update is not None and self.this_update is not None:
            if now != self._wire_get_at:
                self._wire_get = _wire(self.get_headers(now))
                self._wire_get_at = now
            return self._wire_get
        return _WIRE_UNCACHED  # the same for every answer (a live answer's Outcome is used once)


def _wire(headers: dict[str, str]) -> bytes:
    return ("HTTP/1.1 200 OK\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items())).encode()


_WIRE_UNCACHED = _wire(UNCACHED_HEADERS)


def error_outcome(code: int, path: str = "error") -> Outcome:
    return Outcome(resp.error_response(code), resp.STATUS_NAMES[code], path)


def identities(config: Config) -> list[IssuerIdentity]:
    return [IssuerIdentity(i) for i in config.issuers if i.ocsp is not None]


class AnswerLookup:
    """Requests to the answer held for them: ``from_cache`` (whole requests), ``answer_for`` (one CertID)."""

    def __init__(self, issuers: dict[str, IssuerIdentity], store: PresignedStore, request_cache: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.issuers = issuers
        self.store = store
        self.clock = clock
        self._by_key = {key: r for r in issuers.values() for key in r.lookup_keys}
        # how a cacheable request arrived (POST body, GET path) -> (issuer, hash algorithm, serial)
        self.requests: ByteLru[bytes | str, tuple[IssuerIdentity, str, int]] = ByteLru(
            request_cache, REQUEST_ENTRY_OVERHEAD)
        self.ready: ByteLru[tuple[str, int], tuple[bytes, Outcome]] = ByteLru(READY_CACHE, READY_ENTRY_OVERHEAD)
        self.nonced = NonceShapes()

    def from_cache(self, received: bytes | str) -> Outcome | Request:
        """The fast path (event loop, no I/O): a held answer, or the parsed request for the slow path.

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
            request = self.nonced.get(der)  # a nonce request of a shape decoded before (``ocsp.nonced``)
            if request is None:
                request, nonce_at = parse_request_located(der, 100)
                self.nonced.put(der, request, nonce_at)
        except Malformed:
            return error_outcome(resp.MALFORMED_REQUEST, "error")
        return self.from_request(request, received)

    def from_request(self, request: Request, received: bytes | str | None = None) -> Outcome | Request:
        """``from_cache`` for a request parsed already (a serving process's, ``livewire``): the answer held,
        an error, or the request to sign; ``received``: the bytes it arrived as, remembered when cacheable."""
        issuer = self._issuer_of(request)
        if issuer is None:
            return error_outcome(resp.UNAUTHORIZED, "error")
        if len(request.cert_ids) > issuer.settings.max_cert_ids:
            return error_outcome(resp.MALFORMED_REQUEST, "error")
        if len(request.cert_ids) == 1 and (request.nonce is None or issuer.settings.nonce == "ignore"):
            cid = request.cert_ids[0]
            if received is not None:
                self.requests.put(received, (issuer, cid.hash_name, cid.serial), len(received))
            hit = self.answer_for(issuer, cid.hash_name, cid.serial)
            if hit is not None:
                return hit
        return request

    def answer_for(self, issuer: IssuerIdentity, hash_name: str, serial: int) -> Outcome | None:
        """The answer held for one CertID, while it has more than a minute of validity left: the one
        look-up of the answer path, whatever store is behind it."""
        if hash_name != PRESIGN_HASH:
            return None
        key = (issuer.name, serial)
        ready = self.ready.get(key)
        hit = self.store.get(issuer.name, serial, ready[0] if ready is not None else b"")
        if hit is None:
            if ready is not None:
                self.ready.pop(key)
            return None
        body, this_update, next_update, tail = hit
        if body:  # new to this process, or changed since its copy was made
            outcome = Outcome(body, "successful", "presigned", this_update, next_update, tail)
            self.ready.put(key, (tail, outcome), len(body))
        else:
            outcome = ready[1]  # type: ignore[index]
        return outcome if next_update > self.clock() + 60 else None

    def _issuer_of(self, request: Request) -> IssuerIdentity | None:
        found = {self._by_key.get((c.hash_name, c.name_hash, c.key_hash)) for c in request.cert_ids}
        if len(found) != 1:
            return None  # unknown issuer, or CertIDs of several issuers (one response has one signer)
        return found.pop()
