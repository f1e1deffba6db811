"""Signature algorithms: what the token is asked to do and how the result is named in X.509.

Every signature is computed over a digest made on the host, so a 50 MB CRL never crosses the
PKCS#11 boundary: RSA PKCS#1 v1.5 signs a DigestInfo with ``CKM_RSA_PKCS``, RSA-PSS signs the digest
with ``CKM_RSA_PKCS_PSS``, ECDSA signs the digest with raw ``CKM_ECDSA`` (the only EC mechanism
SoftHSM2 offers) and the raw r||s it returns is converted to a DER Ecdsa-Sig-Value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from asn1crypto import algos
from cryptography.hazmat.primitives import hashes

from directory import der

HashName = Literal["sha256", "sha384", "sha512"]
Scheme = Literal["pkcs1", "pss", "ecdsa"]

SIGNING_HASHES = ("sha256", "sha384", "sha512")  # of ``der.DIGESTS``: SHA-1 never signs
# DER DigestInfo prefixes of RFC 8017 §9.2 note 1: prefix + digest = DigestInfo.
_DIGEST_INFO_PREFIX = {name: der.digest_info_prefix(name) for name in SIGNING_HASHES}
_CRYPTOGRAPHY_HASH = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


@dataclass(frozen=True)
class SignatureAlgorithm:
    """One (scheme, hash) pair, e.g. ``rsa-pkcs1-sha256`` or ``ecdsa-sha384``."""

    scheme: Scheme
    hash: HashName

    @classmethod
    def parse(cls, name: str) -> SignatureAlgorithm:
        """Parse ``rsa-pkcs1-sha256``, ``rsa-pss-sha384``, ``ecdsa-sha256`` and friends."""
        parts = name.lower().split("-")
        try:
            if parts[:2] == ["rsa", "pkcs1"] and len(parts) == 3:
                return cls("pkcs1", _hash(parts[2]))
            if parts[:2] == ["rsa", "pss"] and len(parts) == 3:
                return cls("pss", _hash(parts[2]))
            if parts[0] == "ecdsa" and len(parts) == 2:
                return cls("ecdsa", _hash(parts[1]))
        except ValueError:
            pass
        raise ValueError(
            f"unknown signature algorithm {name!r} (expected rsa-pkcs1-shaN, rsa-pss-shaN or ecdsa-shaN,"
            " N in 256/384/512)"
        )

    @cached_property  # read twice per signature (the plan's key)
    def name(self) -> str:
        prefix = {"pkcs1": "rsa-pkcs1", "pss": "rsa-pss", "ecdsa": "ecdsa"}[self.scheme]
        return f"{prefix}-{self.hash}"

    @property
    def key_kind(self) -> Literal["rsa", "ec"]:
        return "ec" if self.scheme == "ecdsa" else "rsa"

    @property
    def digest_size(self) -> int:
        return der.DIGESTS[self.hash].size

    def cryptography_hash(self) -> hashes.HashAlgorithm:
        return _CRYPTOGRAPHY_HASH[self.hash]()

    def new_hash(self) -> hashlib._Hash:
        return hashlib.new(self.hash)

    def digest(self, data: bytes | Iterable[bytes]) -> bytes:
        """Hash ``data`` (bytes, or an iterable of chunks streamed from a builder) on the host."""
        h = self.new_hash()
        if isinstance(data, bytes | bytearray | memoryview):
            h.update(data)
        else:
            for chunk in data:
                h.update(chunk)
        return h.digest()

    def token_input(self, digest: bytes) -> bytes:
        """The bytes handed to the token's raw mechanism for this digest."""
        if len(digest) != self.digest_size:
            raise ValueError(f"{self.hash} digest must be {self.digest_size} bytes, got {len(digest)}")
        if self.scheme == "pkcs1":
            return _DIGEST_INFO_PREFIX[self.hash] + digest
        return digest

    def algorithm_identifier(self) -> algos.SignedDigestAlgorithm:
        """The AlgorithmIdentifier naming this signature (NULL params for PKCS#1, absent for ECDSA)."""
        if self.scheme == "pkcs1":
            return algos.SignedDigestAlgorithm({"algorithm": f"{self.hash}_rsa"})
        if self.scheme == "ecdsa":
            return algos.SignedDigestAlgorithm({"algorithm": f"{self.hash}_ecdsa"})
        return algos.SignedDigestAlgorithm(
            {
                "algorithm": "rsassa_pss",
                "parameters": {
                    "hash_algorithm": {"algorithm": self.hash},
                    "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": self.hash}},
                    "salt_length": self.digest_size,
                    "trailer_field": "trailer_field_bc",
                },
            }
        )

    def algorithm_identifier_der(self) -> bytes:
        return self.algorithm_identifier().dump()


def _hash(name: str) -> HashName:
    if name not in SIGNING_HASHES:
        raise ValueError(name)
    return name  # type: ignore[return-value]


def default_algorithm(key_kind: str, key_size: int) -> SignatureAlgorithm:
    """The conventional choice for a key: SHA-256 for RSA and P-256, SHA-384 for P-384, SHA-512 above."""
    if key_kind == "rsa":
        return SignatureAlgorithm("pkcs1", "sha256")
    if key_size <= 256:
        return SignatureAlgorithm("ecdsa", "sha256")
    if key_size <= 384:
        return SignatureAlgorithm("ecdsa", "sha384")
    return SignatureAlgorithm("ecdsa", "sha512")
