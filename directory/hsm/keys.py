"""One issuer key: hashes on the host, signs in the token, verifies its signatures before returning them.

Verification catches a wrong key (a label that names another key than the certificate's) and a faulty
token before a bad signature leaves the process. The rule (``Verification``):
- RSA: every signature, always (a few tens of µs; and a faulty RSA-CRT signature would give away the
  key's factors to whoever receives it);
- ECDSA, by default: every signature, always;
- ECDSA with a sampled policy (the OCSP responder's keys, where verifying costs about as much as
  SoftHSM2's signature): every signature until ``first`` in a row have verified since the last *trust
  reset*, then one in ``sample``. A trust reset is any change of the signer's ``trust_epoch()`` (a session
  opened and logged in, hence every key looked up again by label; an HSM error of any kind; a module
  re-initialisation) and any signature that failed to verify: after each, every signature is verified
  again. A wrong key is therefore always caught at its first signature; a token that starts returning
  bad signatures after ``first`` good ones is caught with probability 1/``sample`` per bad signature.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from asn1crypto import algos
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes as PublicKey

from directory import der
from directory.hsm.algorithms import SignatureAlgorithm, default_algorithm
from directory.hsm.errors import HsmError, HsmUnavailable, KeyUnusable, SignatureCheckFailed

if TYPE_CHECKING:
    from directory.hsm.signer import HsmSigner

ChunkSource = Callable[[], Iterable[bytes]]  # gives the signed bytes again at each call (retries)


@dataclass(frozen=True)
class Verification:
    """Which ECDSA signatures of a key are verified before being returned (RSA: all of them, always).

    ``first == 0``: every signature. Otherwise every signature until ``first`` in a row have verified since
    the last trust reset, then one in ``sample`` (see the module's docstring).
    """

    first: int = 0
    sample: int = 1


EVERY_SIGNATURE = Verification()
SAMPLED = Verification(first=1000, sample=8)  # the OCSP responder's ECDSA keys


class KeySigner:
    """A key by label, the public key it must match, and the algorithm it signs with."""

    def __init__(self, hsm: HsmSigner, label: str, public_key: PublicKey, algorithm: SignatureAlgorithm | None,
                 holder: str, verification: Verification = EVERY_SIGNATURE) -> None:
        if isinstance(public_key, rsa.RSAPublicKey):
            kind, size = "rsa", public_key.key_size
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            kind, size = "ec", public_key.curve.key_size
        else:
            raise HsmError(f"key {label!r}: unsupported public key type {type(public_key).__name__}")
        algorithm = algorithm or default_algorithm(kind, size)
        if algorithm.key_kind != kind:
            raise HsmError(f"key {label!r}: algorithm {algorithm.name} does not fit a {kind} key")
        self.hsm = hsm
        self.label = label
        self.holder = holder
        self.public_key = public_key
        self.kind = kind
        self.bits = size
        self.algorithm = algorithm
        self.algorithm_identifier: algos.SignedDigestAlgorithm = algorithm.algorithm_identifier()
        self.algorithm_identifier_der: bytes = self.algorithm_identifier.dump()
        self._curve_bytes = (size + 7) // 8 if kind == "ec" else 0
        self._hash = getattr(hashlib, algorithm.hash)  # hashlib.sha256...: hashlib.new(name) costs a Python call more
        self.verification = verification if kind == "ec" else EVERY_SIGNATURE
        self.verified = 0  # signatures verified (and passed) by this signer: tests and metrics read it
        self._epoch: object = None
        self._streak = 0  # verified in a row since the last trust reset
        self._counter = itertools.count()  # next() is atomic under the GIL: threads share it
        prehashed = utils.Prehashed(algorithm.cryptography_hash())
        if algorithm.scheme == "ecdsa":
            self._verify_args: tuple[object, ...] = (ec.ECDSA(prehashed),)
        elif algorithm.scheme == "pkcs1":
            self._verify_args = (padding.PKCS1v15(), prehashed)
        else:
            mgf = padding.MGF1(algorithm.cryptography_hash())
            self._verify_args = (padding.PSS(mgf, algorithm.digest_size), prehashed)

    @property
    def description(self) -> str:
        return f"{self.kind.upper()}-{self.bits}"

    def prepare(self) -> None:
        """Now, what the first signature would do first: a session opened and logged in, the key found, its
        mechanism chosen (remembered: later calls cost nothing). A caller with other work before its first
        signature runs this beside that work; its errors are the ones signing would raise."""
        self.hsm.plan(self.label, self.algorithm)

    def sign_digest(self, digest: bytes, source: ChunkSource | None = None) -> bytes:
        """Sign a digest made with ``self.algorithm.hash``; returns the X.509 signature value.

        ``source`` gives the hashed bytes again, for a key whose token only offers mechanisms that hash
        the data themselves; without it such a key cannot sign a digest alone.
        """
        plan = self.hsm.plan(self.label, self.algorithm)
        if not plan.token_hashes:
            raw = self.hsm.sign_raw(self.label, self.algorithm, self.algorithm.token_input(digest))
        elif source is None:
            raise KeyUnusable(f"key {self.label!r}: this module signs only with {plan.describe()}, and this "
                              "caller has only the digest")
        else:
            raw = self.hsm.sign_data(self.label, self.algorithm, source)
        return self._finish(raw, digest)

    def sign(self, data: bytes | Iterable[bytes]) -> bytes:
        """Hash ``data`` (or a stream of chunks) on the host, then sign the digest."""
        if isinstance(data, bytes | bytearray | memoryview):
            blob = bytes(data)
            return self.sign_digest(self._hash(blob).digest(), lambda: (blob,))
        if not self.hsm.plan(self.label, self.algorithm).token_hashes:
            return self.sign_digest(self.algorithm.digest(data))
        stream = _HashedOnce(data, self.algorithm.new_hash())  # the token hashes: it reads the stream once
        raw = self.hsm.sign_data(self.label, self.algorithm, stream)
        return self._finish(raw, stream.digest())

    def _finish(self, raw: bytes, digest: bytes) -> bytes:
        if self.algorithm.scheme == "ecdsa":
            if len(raw) != 2 * self._curve_bytes:
                raise SignatureCheckFailed(f"key {self.label!r}: token returned {len(raw)} bytes for ECDSA")
            raw = ecdsa_der(raw)
        if self._must_verify():
            try:
                self.verify_digest(raw, digest)
            except SignatureCheckFailed:
                self._streak = 0  # a trust reset: every signature is verified again
                raise
            self._streak += 1
            self.verified += 1
        return raw

    def _must_verify(self) -> bool:
        """The rule of the module's docstring, read after the signature (so its own re-login counts)."""
        policy = self.verification
        if policy.first == 0:
            return True
        epoch = self.hsm.trust_epoch()
        if epoch != self._epoch:
            self._epoch, self._streak = epoch, 0
        return self._streak < policy.first or next(self._counter) % policy.sample == 0

    def verify_digest(self, signature: bytes, digest: bytes) -> None:
        """Raise ``SignatureCheckFailed`` unless ``signature`` over ``digest`` verifies under our public key."""
        try:
            self.public_key.verify(signature, digest, *self._verify_args)  # type: ignore[arg-type]
        except InvalidSignature:
            raise SignatureCheckFailed(
                f"key {self.label!r}: signature does not verify under the public key of {self.holder} "
                "(wrong key label or certificate?)"
            ) from None


class _HashedOnce:
    """A stream handed to the token once, hashed on the host on the way (a retry cannot replay it)."""

    def __init__(self, chunks: Iterable[bytes], hasher: hashlib._Hash) -> None:
        self._chunks: Iterable[bytes] | None = chunks
        self._hasher = hasher

    def __call__(self) -> Iterator[bytes]:
        chunks, self._chunks = self._chunks, None
        if chunks is None:
            raise HsmUnavailable("a streamed input cannot be sent to the token twice; sign it again")
        for chunk in chunks:
            self._hasher.update(chunk)
            yield bytes(chunk)

    def digest(self) -> bytes:
        return self._hasher.digest()


def ecdsa_der(raw: bytes) -> bytes:
    """PKCS#11 raw r||s to DER Ecdsa-Sig-Value (the form X.509 and OCSP carry); on bytes, without integers
    (every ECDSA signature pays it: half the time of going through ``int``)."""
    half = len(raw) // 2
    r, s = der.unsigned_integer(raw[:half]), der.unsigned_integer(raw[half:])
    return b"".join((der.header(0x30, len(r) + len(s)), r, s))
