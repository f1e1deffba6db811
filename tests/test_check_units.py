"""The publication checker's judging parts, fed with answers and CRLs made by ``cryptography`` (software keys):
what a relying party must reject is rejected, statuses are read right, allowances are respected."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from directory.check import compare
from directory.check.crl_probe import CrlProbe
from directory.check.model import GOOD, Revoked
from directory.check.ocsp_probe import OcspProbe, Variant
from directory.config import CheckConfig, CrlConfig, IssuerConfig, OcspConfig
from directory.publication import Target
from directory.registry.checks import CertificateFacts

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
T = NOW.timestamp()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
          ca: bool, eku: bool = False) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def pki() -> dict[str, object]:
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("ca", "other", "responder", "plain")}
    return {
        "keys": keys,
        "ca": _cert("CA", keys["ca"], "CA", keys["ca"], ca=True),
        "responder": _cert("OCSP", keys["responder"], "CA", keys["ca"], ca=False, eku=True),
        "plain": _cert("NOT OCSP", keys["plain"], "CA", keys["ca"], ca=False),
    }


def _issuer(pki: dict, nonce: str = "echo") -> IssuerConfig:
    return IssuerConfig("ac-test", Path("ca.pem"), pki["ca"], "ac-test", None, CrlConfig(),
                        OcspConfig(None, None, nonce=nonce))


def _answer(pki: dict, serial: int, status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
            signer: str = "ca", cert: str | None = None, next_update: dt.datetime | None = None,
            hash_name: str = "sha1", responder: str | None = None) -> bytes:
    ca = pki["ca"]
    h = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256()}[hash_name]
    bits = ca.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    revoked = status == ocsp.OCSPCertStatus.REVOKED
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        hashlib.new(hash_name, ca.subject.public_bytes()).digest(), hashlib.new(hash_name, bits).digest(), serial, h,
        status, NOW - dt.timedelta(minutes=1), next_update or NOW + dt.timedelta(days=1),
        NOW - dt.timedelta(hours=1) if revoked else None, x509.ReasonFlags.key_compromise if revoked else None)
    if responder is not None:  # a stranger's key and name
        stranger = _cert("STRANGER", pki["keys"][responder], "STRANGER", pki["keys"][responder], ca=True)
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, stranger)
    else:
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, pki[cert] if cert else ca)
    if cert:
        builder = builder.certificates([pki[cert]])
    return builder.sign(pki["keys"][signer], hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _read(pki: dict, body: bytes, serial: int = 0x1234, nonce: bytes | None = None, hash_name: str = "sha1"):
    probe = OcspProbe(None, [_issuer(pki)])  # type: ignore[arg-type]
    return probe._read(probe.issuers["ac-test"], serial, Variant("GET", hash_name, nonce is not None), nonce, body, T)


def test_ocsp_answers_a_client_must_reject_are_problems(pki: dict) -> None:
    assert _read(pki, _answer(pki, 0x1234)).status == GOOD
    assert _read(pki, _answer(pki, 0x1234, hash_name="sha256"), hash_name="sha256").status == GOOD
    revoked = _read(pki, _answer(pki, 0x1234, ocsp.OCSPCertStatus.REVOKED)).status
    assert revoked == Revoked(int(T - 3600), "keyCompromise")
    assert _read(pki, _answer(pki, 0x1234, signer="responder", cert="responder")).status == GOOD  # delegated
    problems = {
        "lacks id-kp-OCSPSigning": _answer(pki, 0x1234, signer="plain", cert="plain"),
        "signature does not verify": _answer(pki, 0x1234)[:-1] + bytes([_answer(pki, 0x1234)[-1] ^ 1]),
        "no certificate for the responder": _answer(pki, 0x1234, signer="other", cert=None, responder="other"),
        "another CertID": _answer(pki, 0x9999),
        "expired answer": _answer(pki, 0x1234, next_update=NOW - dt.timedelta(seconds=1)),
        "unparseable": b"\x30\x03\x0a\x01\x00junk",
    }
    for expected, body in problems.items():
        answer = _read(pki, body)
        assert answer.status is None and answer.problem and expected in answer.problem, (expected, answer)
    assert "nonce" in (_read(pki, _answer(pki, 0x1234), nonce=b"n" * 16).problem or "")
    try_later = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
    answer = _read(pki, try_later.public_bytes(serialization.Encoding.DER))
    assert answer.trouble == "tryLater" and answer.problem is None  # no statement: not a disagreement
    refused = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
    assert "UNAUTHORIZED" in (_read(pki, refused.public_bytes(serialization.Encoding.DER)).problem or "")


def _crl(pki: dict, number: int, entries: list[tuple[int, x509.ReasonFlags]], base: int | None = None,
         signer: str = "ca", issuer: str = "CA") -> bytes:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(_name(issuer))
               .last_update(NOW - dt.timedelta(minutes=5)).next_update(NOW + dt.timedelta(days=1))
               .add_extension(x509.CRLNumber(number), critical=False))
    if base is not None:
        builder = builder.add_extension(x509.DeltaCRLIndicator(base), critical=True)
    for serial, reason in entries:
        entry = (x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - dt.timedelta(hours=1))
                 .add_extension(x509.CRLReason(reason), critical=False))
        if serial == 0xA:
            entry = entry.add_extension(x509.InvalidityDate(dt.datetime(2026, 11, 1)), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(pki["keys"][signer], hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_crl_parsed_completely_and_deltas_applied(pki: dict) -> None:
    issuer = IssuerConfig("ac-test", Path("ca.pem"), pki["ca"], "ac-test", None, CrlConfig(delta=True))
    probe = CrlProbe(None, [issuer], margin=10)  # type: ignore[arg-type]
    full_target, delta_target = Target("full", "main", "ac-test.crl"), Target("delta", "main", "ac-test-delta.crl")
    full = probe._parse(issuer, "ac-test.crl", full_target, _crl(pki, 5, [
        (0xA, x509.ReasonFlags.key_compromise), (0xB, x509.ReasonFlags.certificate_hold)]), "f")
    delta = probe._parse(issuer, "ac-test-delta.crl", delta_target, _crl(pki, 6, [
        (0xB, x509.ReasonFlags.remove_from_crl), (0xC, x509.ReasonFlags.superseded)], base=5), "d")
    assert full.number == 5 and delta.base_number == 5
    assert full.entries[0xA] == Revoked(int(T - 3600), "keyCompromise", int(dt.datetime(2026, 11, 1,
                                                                                      tzinfo=dt.UTC).timestamp()))
    probe.served = {"ac-test.crl": full, "ac-test-delta.crl": delta}

    def seen(serial: int) -> list[object]:
        return [v.status for v in probe.views("ac-test", serial)]

    assert seen(0xA)[0] == seen(0xA)[1] != GOOD
    assert seen(0xB)[0] == Revoked(int(T - 3600), "certificateHold") and seen(0xB)[1] == GOOD  # released
    assert seen(0xC) == [GOOD, Revoked(int(T - 3600), "superseded")]  # only a delta-aware client knows yet
    assert seen(0xD) == [GOOD, GOOD]
    bad = {"signature": _crl(pki, 7, [], signer="other"), "another name": _crl(pki, 7, [], issuer="X")}
    for words, body in bad.items():
        with pytest.raises(ValueError, match=words):
            probe._parse(issuer, "ac-test.crl", full_target, body, "x")
    with pytest.raises(ValueError, match="deltaCRLIndicator"):
        probe._parse(issuer, "ac-test.crl", full_target, _crl(pki, 8, [], base=7), "x")
    assert "expired" in (probe._currency(full, T + 2 * 86400) or "")


def _facts(status: str = "revoked", changed: float = T - 3600, placed: bool | None = True,
           not_after: float | None = None) -> CertificateFacts:
    revoked = status != "good"
    return CertificateFacts(1, "ac-test", "1234", status, int(T - 7200) if revoked else None,
                            "keyCompromise" if revoked else None, None,
                            int(not_after) if not_after else int(T + 86400), int(changed), True, placed, False)


def test_allowances_then_mismatches() -> None:
    settings = CheckConfig(ocsp_grace=5, crl_margin=10, ldap_grace=30)
    revoked = Revoked(int(T - 7200), "keyCompromise")
    answer = _read_answer(GOOD)
    assert compare.ocsp_verdicts(_facts(changed=T - 2), [answer], settings, T) == ([], [])  # within the grace
    found, _ = compare.ocsp_verdicts(_facts(changed=T - 6), [answer], settings, T)
    assert [(f.channel, f.serial_hex, f.seen) for f in found] == [("ocsp", "1234", "good")]
    assert compare.ocsp_verdicts(_facts(changed=T - 6), [_read_answer(revoked)], settings, T) == ([], [])
    wrong = _read_answer(None, problem="signature does not verify")
    assert compare.ocsp_verdicts(_facts(changed=T - 1), [wrong], settings, T)[0]  # no grace for a bad answer

    from directory.check.crl_probe import View
    stale = View("x.crl number 3", GOOD, T - 100, allowance=70, full=True)
    assert not compare.crl_verdicts(_facts(changed=T - 60), [stale], settings, False, T)
    assert compare.crl_verdicts(_facts(changed=T - 80), [stale], settings, False, T)
    built_after = View("x.crl number 4", GOOD, T - 5, allowance=3600, full=True)
    assert compare.crl_verdicts(_facts(changed=T - 60), [built_after], settings, False, T)
    assert not compare.crl_verdicts(_facts(changed=T - 80, not_after=T - 1), [stale], settings, False, T)

    assert compare.ldap_verdict(_facts("good", changed=T - 60), False, settings, "ldap://x", T).expected.startswith(
        "found")
    assert compare.ldap_verdict(_facts("good", changed=T - 10), False, settings, "ldap://x", T) is None
    assert compare.ldap_verdict(_facts("good", changed=T - 60, placed=None), False, settings, "ldap://x", T) is None
    assert compare.ldap_verdict(_facts("revoked", changed=T - 60), True, settings, "ldap://x", T).seen.startswith(
        "found")
    expired = _facts("good", changed=T - 9000, not_after=T - 60)
    assert compare.ldap_verdict(expired, True, settings, "ldap://x", T) is not None


def _read_answer(status: object, problem: str | None = None):
    from directory.check.ocsp_probe import Answer

    return Answer(Variant("GET", "sha1", False), status=status, problem=problem)  # type: ignore[arg-type]


def test_check_section_defaults_and_errors(private_config: Path) -> None:
    from directory.config import ConfigError, load_config

    text = private_config.read_text()
    default = load_config(private_config).check
    assert default.enabled and default.interval == 10 and default.full_cycle == 86400 and not default.fail_readiness
    private_config.write_text(text + '\n[check]\ninterval = "30s"\nfull_cycle = "12h"\nfail_readiness = true\n'
                              'url = "https://ocsp.example.org/"\nldap_bind = "service"\n')
    check = load_config(private_config).check
    assert (check.interval, check.full_cycle, check.fail_readiness, check.url, check.ldap_bind) == (
        30, 43200, True, "https://ocsp.example.org", "service")
    for bad, key in (("interval = 0", "check.interval"), ('full_cycle = "5s"\ninterval = 10', "check.full_cycle"),
                     ('url = "ftp://x"', "check.url"), ('ldap_bind = "root"', "check.ldap_bind"),
                     ("sample = 3", "check.sample"), ('recent = "2d"', "check.recent")):
        private_config.write_text(text + f"\n[check]\n{bad}\n")
        with pytest.raises(ConfigError) as info:
            load_config(private_config)
        assert info.value.key == key, (bad, info.value)
    private_config.write_text(text)
    result = subprocess.run([sys.executable, "-m", "directory.cli", "check", "publication", "-c", str(private_config),
                             "--url", "gopher://x"], capture_output=True, text=True)
    assert result.returncode == 2 and "--url" in result.stderr


def test_registry_reads_on_both_backends(registry_location: str) -> None:
    import json as json_

    from directory.certinfo import CertificateInfo
    from directory.registry import Registry
    from directory.registry.checks import CheckReads, recent_reports

    now = 1_900_000_000
    registry = Registry(registry_location, clock=lambda: float(now))
    try:
        registry.ensure_issuer("ca", b"subject", b"cert")
        registry.import_certificates("ca", [CertificateInfo(n, format(n, "x"), f"CN=u{n}", (), (), None, now - 86400,
                                                            now + 86400, b"\x30\x03\x02\x01" + bytes([n]),
                                                            f"{n:064x}", "authentication") for n in range(1, 11)])
        reads = CheckReads(registry, "layout")
        before = reads.first_change_since(now - 60)
        registry.revoke("ca", "3", "keyCompromise", at=now - 10, invalidity_date=now - 100)
        registry.ocsp_store([("ca", "4", "sha256", now, now + 60, b"answer")])
        ids = reads.next_ids(0, 100)
        assert len(ids) == 10 and reads.next_ids(ids[7], 5) == ids[8:] and reads.certificate_count() == 10
        facts = reads.facts(ids)
        three = next(f for f in facts.values() if f.serial_hex == "3")
        assert (three.status, three.reason, three.revocation_time, three.invalidity_date, three.changed_at) == (
            "revoked", "keyCompromise", now - 10, now - 100, now)
        assert three.has_der and three.placed is None and not three.sha256_answer
        assert next(f for f in facts.values() if f.serial_hex == "4").sha256_answer
        assert [(cid, at) for _, cid, at in reads.changes_after(before)] == [(three.id, float(now))]
        reads.state_set({"cursor:n": "5", "report:n": json_.dumps({"at": now - 10, "text": "x"})})
        reads.state_set({"cursor:n": "6", "report:old": json_.dumps({"at": now - 1000, "text": "y"})})
        assert reads.state_get("cursor:n") == "6" and reads.state_get("nothing") is None
        assert [r["text"] for r in recent_reports(registry, 120, now)] == ["x"]
    finally:
        registry.close()
