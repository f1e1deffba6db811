"""OCSP as a relying party sees it: requests built and answers read with ``cryptography``, over HTTP.

Each answer must parse, name the CertID asked about, be signed by the issuer or by a responder the
issuer delegated (id-kp-OCSPSigning, issued by it, valid now), be current (thisUpdate not ahead,
nextUpdate not past), echo our nonce when nonces are echoed; only then is its status compared.
SHA-1 CertIDs without a nonce hit the pre-signed cache, which is what RFC 5019 clients get.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

from directory.check.http import HttpClient, HttpTrouble
from directory.check.model import GOOD, Revoked, Status, reason_of
from directory.config import IssuerConfig

CLOCK_SKEW = 300  # seconds an answer's thisUpdate may lie ahead of our clock
HASH_CLASSES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256}


@dataclass(frozen=True)
class Variant:
    method: str  # GET | POST
    hash_name: str  # sha1 | sha256
    nonce: bool

    def __str__(self) -> str:
        return f"{self.method} {self.hash_name}" + (" with nonce" if self.nonce else "")


@dataclass(frozen=True)
class Answer:
    """What one request got: a status, or a problem a client would reject the answer for, or no answer."""

    variant: Variant
    status: Status | None = None
    problem: str | None = None  # the answer is wrong in itself (unparseable, unsigned, another CertID...)
    trouble: str | None = None  # no statement at all (unreachable, tryLater)


class _Issuer:
    def __init__(self, issuer: IssuerConfig) -> None:
        self.name = issuer.name
        self.certificate = issuer.certificate
        self.nonce_echo = issuer.ocsp is not None and issuer.ocsp.nonce == "echo"
        subject = issuer.certificate.subject.public_bytes()
        bits = _public_key_bits(issuer.certificate.public_key())
        self.hashes = {name: (hashlib.new(name, subject).digest(), hashlib.new(name, bits).digest())
                       for name in HASH_CLASSES}
        self.verified_responders: set[bytes] = set()  # DER of delegated responder certificates checked once


class OcspProbe:
    def __init__(self, http: HttpClient, issuers: Sequence[IssuerConfig]) -> None:
        self.http = http
        self.issuers = {i.name: _Issuer(i) for i in issuers if i.ocsp is not None}

    def answers(self, issuer: str, serial: int, variants: Sequence[Variant], now: float) -> list[Answer]:
        return [self._ask(self.issuers[issuer], serial, v, now) for v in variants]

    def _ask(self, issuer: _Issuer, serial: int, variant: Variant, now: float) -> Answer:
        name_hash, key_hash = issuer.hashes[variant.hash_name]
        builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, serial,
                                                                   HASH_CLASSES[variant.hash_name]())
        nonce = os.urandom(16) if variant.nonce else None
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        der = builder.build().public_bytes(serialization.Encoding.DER)
        try:
            if variant.method == "GET":
                path = "/ocsp/" + quote(base64.b64encode(der).decode(), safe="")
                status, _, body = self.http.request("GET", path)
            else:
                status, _, body = self.http.request("POST", "/ocsp", der,
                                                    {"Content-Type": "application/ocsp-request"})
        except HttpTrouble as exc:
            return Answer(variant, trouble=str(exc))
        if status == 503:
            return Answer(variant, trouble="HTTP 503 (listener full)")
        if status != 200:
            return Answer(variant, problem=f"HTTP {status}")
        return self._read(issuer, serial, variant, nonce, body, now)

    def _read(self, issuer: _Issuer, serial: int, variant: Variant, nonce: bytes | None, body: bytes,
              now: float) -> Answer:
        try:
            answer = ocsp.load_der_ocsp_response(body)
            if answer.response_status == ocsp.OCSPResponseStatus.TRY_LATER:
                return Answer(variant, trouble="tryLater")
            if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
                return Answer(variant, problem=f"responseStatus {answer.response_status.name}")
            singles = list(answer.responses)
            problem = self._signature_problem(issuer, answer, now)
            if problem is None and len(singles) != 1:
                problem = f"{len(singles)} SingleResponses for one CertID"
            if problem is not None:
                return Answer(variant, problem=problem)
            single = singles[0]
            name_hash, key_hash = issuer.hashes[variant.hash_name]
            if (single.serial_number != serial or single.hash_algorithm.name != variant.hash_name
                    or single.issuer_name_hash != name_hash or single.issuer_key_hash != key_hash):
                return Answer(variant, problem=f"answer about another CertID (serial 0x{single.serial_number:x}, "
                                               f"{single.hash_algorithm.name})")
            if single.this_update_utc.timestamp() > now + CLOCK_SKEW:
                return Answer(variant, problem="thisUpdate in the future")
            if single.next_update_utc is not None and single.next_update_utc.timestamp() <= now:
                return Answer(variant, problem="expired answer (nextUpdate passed)")
            if nonce is not None and issuer.nonce_echo and _nonce(answer) != nonce:
                return Answer(variant, problem="our nonce is not echoed")
            state = single.certificate_status
            if state == ocsp.OCSPCertStatus.GOOD:
                return Answer(variant, status=GOOD)
            if state == ocsp.OCSPCertStatus.UNKNOWN:
                return Answer(variant, status="unknown")
            return Answer(variant, status=Revoked(int(single.revocation_time_utc.timestamp()),
                                                  reason_of(single.revocation_reason)))
        except ValueError as exc:  # cryptography's parse errors (non-canonical DER included)
            return Answer(variant, problem=f"unparseable answer: {exc}")

    def _signature_problem(self, issuer: _Issuer, answer: ocsp.OCSPResponse, now: float) -> str | None:
        ca = issuer.certificate
        signer = None
        for candidate in [ca, *answer.certificates]:
            if answer.responder_key_hash is not None:
                if x509.SubjectKeyIdentifier.from_public_key(candidate.public_key()).digest == \
                        answer.responder_key_hash:  # type: ignore[arg-type]
                    signer = candidate
                    break
            elif answer.responder_name == candidate.subject:
                signer = candidate
                break
        if signer is None:
            return "no certificate for the responder ID"
        if signer is not ca:
            problem = _delegation_problem(issuer, ca, signer, now)
            if problem:
                return problem
        try:
            verify(signer.public_key(), answer.signature, answer.tbs_response_bytes, answer.signature_algorithm_oid,
                   _hash_of(answer))
        except InvalidSignature:
            return "signature does not verify"
        except (UnsupportedAlgorithm, ValueError, TypeError) as exc:
            return f"signature cannot be checked: {exc}"
        return None


def _delegation_problem(issuer: _Issuer, ca: x509.Certificate, signer: x509.Certificate, now: float) -> str | None:
    der = signer.public_bytes(serialization.Encoding.DER)
    if der not in issuer.verified_responders:
        try:
            signer.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            return "responder certificate not issued by the CA"
        try:
            eku = list(signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except (ValueError, x509.ExtensionNotFound):
            eku = []
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            return "responder certificate lacks id-kp-OCSPSigning"
        issuer.verified_responders.add(der)
    if not signer.not_valid_before_utc.timestamp() <= now <= signer.not_valid_after_utc.timestamp():
        return "responder certificate not valid now"
    return None


def _hash_of(answer: ocsp.OCSPResponse) -> hashes.HashAlgorithm | None:
    try:
        return answer.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None


def _nonce(answer: ocsp.OCSPResponse) -> bytes | None:
    try:
        return answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None


def verify(key: object, signature: bytes, data: bytes, oid: x509.ObjectIdentifier,
           digest: hashes.HashAlgorithm | None) -> None:
    """Raise InvalidSignature unless ``signature`` over ``data`` verifies with ``key``."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, data)
        return
    if digest is None:
        raise UnsupportedAlgorithm(f"no hash known for {oid.dotted_string}")
    if isinstance(key, rsa.RSAPublicKey):
        pad: padding.AsymmetricPadding = (padding.PSS(padding.MGF1(digest), padding.PSS.AUTO)
                                          if oid == SignatureAlgorithmOID.RSASSA_PSS else padding.PKCS1v15())
        key.verify(signature, data, pad, digest)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(digest))
    else:
        raise UnsupportedAlgorithm(f"key type {type(key).__name__}")


def _public_key_bits(key: object) -> bytes:
    """The contents of the subjectPublicKey BIT STRING (what issuerKeyHash hashes, RFC 6960 §4.1.1)."""
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raise UnsupportedAlgorithm(f"key type {type(key).__name__}")
