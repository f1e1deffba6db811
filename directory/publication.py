"""Where the publications live: public URLs, the CRL folder, each issuer's CRLs and their partitions.

One home for these facts, so that the CRL builder, the HTTP routes, the directory's CA entries, the page,
the metrics, the admin API, the publication checker and the demo's certificates agree without importing
each other:

- ``/crl/NAME.crl`` an issuer's full CRL, ``/crl/NAME-pI.crl`` partition I of N, ``/crl/NAME-delta.crl``
  its delta; ``/ca/NAME.crt`` the CA certificate, ``/ca/NAME/ocsp.crt`` its OCSP responder's certificate;
  ``/ocsp`` the responder; ``/pc/FILE`` a certification policy document (all under ``[http] base_url``);
- the CRL files are ``DATA_DIR/crl/`` + those names (older ones in ``DATA_DIR/crl/archive/``);
- a serial's partition key is its low 32 bits (stable, cheap); partition I of N holds the serials whose
  key modulo N is I. The registry stores the key (``serial_low``) so a partition is one indexed query.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only read here: the registry imports this module, and needs no configuration for it
    from directory.config import Config, IssuerConfig


def crl_dir(config: Config) -> Path:
    """The folder of the published CRL files (served from there, and read for the directory's CA entries)."""
    return config.data_dir / "crl"


def crl_path(filename: str) -> str:
    """The path a CRL file is served at (the CRL component's ``/crl/{name}`` route)."""
    return f"/crl/{filename}"


def crl_url(base_url: str, filename: str) -> str:
    return base_url.rstrip("/") + crl_path(filename)


def ca_certificate_url(base_url: str, issuer: str) -> str:
    return f"{base_url.rstrip('/')}/ca/{issuer}.crt"


def ocsp_url(base_url: str) -> str:
    return f"{base_url.rstrip('/')}/ocsp"


def ocsp_signer_path(issuer: str) -> str:
    """Where an issuer's delegated OCSP responder certificate is served (DER)."""
    return f"/ca/{issuer}/ocsp.crt"


def policy_path(filename: str) -> str:
    """Where a certification policy document named in ``[[issuers.policies]]`` is served."""
    return f"/pc/{filename}"


def full_crl_name(issuer: str) -> str:
    return f"{issuer}.crl"


def delta_crl_name(issuer: str) -> str:
    return f"{issuer}-delta.crl"


def partition_crl_name(issuer: str, index: int) -> str:
    return f"{issuer}-p{index}.crl"


def partition_key(serial: int) -> int:
    """The low 32 bits of a serial: what partitions are cut on (``partition_key(serial) % N``)."""
    return serial & 0xFFFFFFFF


@dataclass(frozen=True)
class Target:
    """What one CRL covers and where it is published."""

    kind: str  # full | delta
    scope: str  # main | p<i>
    filename: str  # e.g. ac-personnes.crl, ac-personnes-delta.crl, ac-personnes-p3.crl
    partition: tuple[int, int] | None = None  # (N, i): partition_key(serial) % N == i

    def covers(self, serial: int) -> bool:
        """Whether a certificate with this serial is listed on this CRL when revoked."""
        return self.partition is None or partition_key(serial) % self.partition[0] == self.partition[1]


def delta_target(issuer: str) -> Target:
    return Target("delta", "main", delta_crl_name(issuer))


def targets_of(issuer: IssuerConfig) -> list[Target]:
    """Every CRL an issuer publishes: the full one, its partitions, then the delta when configured."""
    name, n = issuer.name, issuer.crl.partitions
    targets = [Target("full", "main", full_crl_name(name))]
    targets += [Target("full", f"p{i}", partition_crl_name(name, i), (n, i)) for i in range(n)]
    if issuer.crl.delta:
        targets.append(delta_target(name))
    return targets
