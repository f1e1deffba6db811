"""``[[issuers]]``: each CA we publish for (certificate, key label, signature algorithm) with its
``[issuers.crl]`` schedule and its ``[issuers.ocsp]`` responder.

An issuer without ``key_label`` is offline (a root whose key is kept at the key ceremony): it builds no
CRL; its CRL (the ARL) is signed elsewhere and installed with ``annuaire crl publish``. Only the keys that
make sense for such a CRL are accepted in its ``[issuers.crl]`` table."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from directory.config.policies import PolicyDocument, policies_section
from directory.config.reader import ConfigError, Section, load_certificate, parse_duration
from directory.hsm.algorithms import SignatureAlgorithm

ISSUER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class CrlConfig:
    """CRL publication of one issuer (``[issuers.crl]``); durations in seconds."""

    interval: int = 3600
    validity: int = 7 * 86400
    overlap: int = 86400
    on_revocation_delay: int | None = 60
    delta: bool = False
    delta_interval: int = 900
    delta_validity: int = 86400
    partitions: int = 0
    keep_expired: bool = False
    archive: int = 10
    issuing_distribution_point: bool = False
    number_floor: int = 0  # the CRL numbers built here are greater than this (a CA moved from another system)
    expiry_warning: int = 30 * 86400  # an offline issuer's CRL: warn this long before its nextUpdate


@dataclass(frozen=True)
class OcspConfig:
    """OCSP for one issuer (``[issuers.ocsp]``); present means served, absent means ``unauthorized``."""

    signer_certificate_path: Path | None
    signer_certificate: x509.Certificate | None = field(repr=False, compare=False)
    signer_key_label: str | None = None
    validity: int = 4 * 86400
    nonce: str = "echo"
    unknown_status: str = "unknown"
    max_cert_ids: int = 10
    live_concurrency: int = 4


@dataclass(frozen=True)
class IssuerConfig:
    name: str
    certificate_path: Path
    certificate: x509.Certificate = field(repr=False, compare=False)
    key_label: str | None  # None: an offline issuer (its CRL is published, never built here)
    signature_algorithm: SignatureAlgorithm | None
    crl: CrlConfig = field(default_factory=CrlConfig)
    ocsp: OcspConfig | None = None
    policies: tuple[PolicyDocument, ...] = ()  # certification policies shown (and served) on the page

    @property
    def offline(self) -> bool:
        """True when the issuer's key is not here: its CRL comes from ``annuaire crl publish``."""
        return self.key_label is None


def issuer_section(file: Path, index: int, table: Any) -> IssuerConfig:
    if not isinstance(table, dict):
        raise ConfigError(file, f"issuers[{index}]", "must be a table")
    s = Section(file, f"issuers[{index}]", table,
                {"name", "certificate", "key_label", "signature_algorithm", "crl", "ocsp", "policies"})
    name = s.get("name", str, required=True)
    if not ISSUER_NAME.match(name):
        raise s.error("name", f"{name!r} must be lower-case letters, digits and dashes (it appears in URLs)")
    s.prefix = f"issuers[{name}]"
    cert_path = s.path("certificate")
    assert cert_path is not None
    cert = load_certificate(s, "certificate", cert_path)
    algorithm = None
    if "signature_algorithm" in table:
        try:
            algorithm = SignatureAlgorithm.parse(s.get("signature_algorithm", str))
        except ValueError as exc:
            raise s.error("signature_algorithm", str(exc)) from None
    key_label = s.get("key_label", str, None)
    if key_label is not None and not key_label:
        raise s.error("key_label", "must not be empty (omit it for an offline issuer)")
    if key_label is None and algorithm is not None:
        raise s.error("signature_algorithm", "an issuer without key_label signs nothing here")
    crl_keys = set(CrlConfig.__dataclass_fields__) if key_label is not None else OFFLINE_CRL_KEYS
    crl_section = s.table_of("crl")
    if key_label is None:
        for key in crl_section:
            if key not in OFFLINE_CRL_KEYS and key in CrlConfig.__dataclass_fields__:
                raise ConfigError(file, f"issuers[{name}].crl.{key}", "an issuer without key_label builds no CRL "
                                  "(its CRL is signed offline and installed with `annuaire crl publish`)")
    crl = _crl(Section(file, f"issuers[{name}].crl", crl_section, crl_keys), offline=key_label is None)
    ocsp = None
    if "ocsp" in table:
        ocsp = _ocsp(Section(file, f"issuers[{name}].ocsp", s.table_of("ocsp"), {
            "signer_certificate", "signer_key_label", "validity", "nonce", "unknown_status", "max_cert_ids",
            "live_concurrency"}), cert)
        if key_label is None and ocsp.signer_key_label is None:
            raise s.error("ocsp", "an issuer without key_label answers OCSP only through a delegated responder "
                                  "(signer_certificate and signer_key_label)")
    policies = policies_section(file, f"issuers[{name}].policies", table["policies"]) if "policies" in table else ()
    return IssuerConfig(name, cert_path, cert, key_label, algorithm, crl, ocsp, policies)


# [issuers.crl] keys an offline issuer may set (everything else is about building CRLs here)
OFFLINE_CRL_KEYS = {"issuing_distribution_point", "archive", "expiry_warning"}


def _ocsp(s: Section, ca: x509.Certificate) -> OcspConfig:
    """A delegated responder (certificate + key label, issued by this CA for id-kp-OCSPSigning) or the CA key."""
    cert_path = s.path("signer_certificate", None)
    label = s.get("signer_key_label", str, None)
    if (cert_path is None) != (label is None):
        raise s.error("signer_key_label", "signer_certificate and signer_key_label go together "
                                          "(omit both to sign with the CA key)")
    signer = None
    if cert_path is not None:
        signer = load_certificate(s, "signer_certificate", cert_path)
        try:
            signer.verify_directly_issued_by(ca)
        except Exception:
            raise s.error("signer_certificate", "not issued by this issuer's CA certificate") from None
        try:
            eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = []
        if x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise s.error("signer_certificate", "lacks extendedKeyUsage id-kp-OCSPSigning")
    validity = OcspConfig.validity
    if "validity" in s.table:
        try:
            validity = parse_duration(s.table["validity"])
        except ValueError as exc:
            raise s.error("validity", str(exc)) from None
        if validity < 60:
            raise s.error("validity", "must be at least 60 seconds")
    nonce = s.get("nonce", str, "echo")
    if nonce not in ("echo", "ignore"):
        raise s.error("nonce", 'must be "echo" or "ignore"')
    unknown = s.get("unknown_status", str, "unknown")
    if unknown not in ("unknown", "revoked"):
        raise s.error("unknown_status", 'must be "unknown" or "revoked" (RFC 6960 §2.2)')
    max_ids = s.get("max_cert_ids", int, 10)
    live = s.get("live_concurrency", int, 4)
    if not 1 <= max_ids <= 100:
        raise s.error("max_cert_ids", "must be between 1 and 100")
    if not 1 <= live <= 1024:
        raise s.error("live_concurrency", "must be between 1 and 1024")
    return OcspConfig(cert_path, signer, label, validity, nonce, unknown, max_ids, live)


def _crl(s: Section, offline: bool = False) -> CrlConfig:
    defaults = CrlConfig()
    values: dict[str, object] = {}
    if offline:  # nothing is built, nothing is scheduled for it
        values.update(on_revocation_delay=None, delta=False, partitions=0)
    if s.table.get("on_revocation_delay") is False:  # explicitly off: only the schedule rebuilds
        values["on_revocation_delay"] = None
    for key in ("interval", "validity", "overlap", "delta_interval", "delta_validity", "on_revocation_delay",
                "expiry_warning"):
        if key in s.table and key not in values:
            try:
                values[key] = parse_duration(s.table[key])
            except ValueError as exc:
                raise s.error(key, str(exc)) from None
    for key in ("delta", "keep_expired", "issuing_distribution_point"):
        if key in s.table:
            values[key] = s.get(key, bool)
    for key, low, high in (("partitions", 0, 4096), ("archive", 0, 10000), ("number_floor", 0, 2**159)):
        if key in s.table:
            value = s.get(key, int)
            if not low <= value <= high:
                raise s.error(key, f"must be between {low} and {high}")
            values[key] = value
    crl = CrlConfig(**{**defaults.__dict__, **values})  # type: ignore[arg-type]
    if crl.validity <= crl.overlap:
        raise s.error("overlap", f"must be shorter than validity ({crl.validity}s)")
    if crl.interval <= 0 or crl.interval > crl.validity - crl.overlap:
        raise s.error("interval", "must be positive and at most validity - overlap, or CRLs could expire")
    if crl.delta and not 0 < crl.delta_interval < crl.delta_validity:
        raise s.error("delta_interval", "must be positive and shorter than delta_validity")
    return crl
