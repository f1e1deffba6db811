"""One issuer key: hashes on the host, signs in the token, verifies every signature before returning it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
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


class KeySigner:
    """A key by label, the public key it must match, and the algorithm it signs with."""

    def __init__(self, hsm: HsmSigner, label: str, public_key: PublicKey, algorithm: SignatureAlgorithm | None,
                 holder: str) -> None:
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

    @property
    def description(self) -> str:
        return f"{self.kind.upper()}-{self.bits}"

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
            return self.sign_digest(self.algorithm.digest(blob), lambda: (blob,))
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
        self.verify_digest(raw, digest)
        return raw

    def verify_digest(self, signature: bytes, digest: bytes) -> None:
        """Raise ``SignatureCheckFailed`` unless ``signature`` over ``digest`` verifies under our public key."""
        prehashed = utils.Prehashed(self.algorithm.cryptography_hash())
        try:
            if self.algorithm.scheme == "ecdsa":
                self.public_key.verify(signature, digest, ec.ECDSA(prehashed))  # type: ignore[call-arg]
            elif self.algorithm.scheme == "pkcs1":
                self.public_key.verify(signature, digest, padding.PKCS1v15(), prehashed)  # type: ignore[call-arg]
            else:
                mgf = padding.MGF1(self.algorithm.cryptography_hash())
                pss = padding.PSS(mgf, self.algorithm.digest_size)
                self.public_key.verify(signature, digest, pss, prehashed)  # type: ignore[call-arg]
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
    """PKCS#11 raw r||s to DER Ecdsa-Sig-Value (the form X.509 and OCSP carry)."""
    half = len(raw) // 2
    return der.sequence(der.integer(int.from_bytes(raw[:half], "big")), der.integer(int.from_bytes(raw[half:], "big")))
