"""The PKCS#11 signer against the real SoftHSM2 token of the demo."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

from directory.demo import issuance
from directory.hsm.algorithms import SignatureAlgorithm
from directory.hsm.cryptoki import CryptokiError
from directory.hsm.signer import HsmSettings, HsmSigner, KeyNotFound, SignatureCheckFailed


def _signer(demo: Path) -> HsmSigner:
    return HsmSigner(HsmSettings("/usr/lib/softhsm/libsofthsm2.so", "annuaire-demo",
                                 (demo / "hsm" / "pin").read_text().strip(), 2,
                                 softhsm2_conf=str(demo / "hsm" / "softhsm2.conf")))


def _cert(demo: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((demo / "ca" / f"{name}.pem").read_bytes())


@pytest.fixture(scope="module")
def hsm(demo_token: Path):  # type: ignore[no-untyped-def]
    signer = _signer(demo_token)
    yield signer
    signer.close()


@pytest.fixture(scope="module")
def ec_keys(hsm: HsmSigner) -> dict[str, bytes]:
    """P-256 and P-384 keys generated in the token for these tests (stored, non-extractable)."""
    out = {}
    with hsm.admin_session() as session:
        for curve in ("p-256", "p-384"):
            label = f"test-{curve}"
            existing = list(session.get_objects({pkcs11.Attribute.LABEL: label,
                                                 pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY}))
            if existing:
                continue
            out[curve] = issuance.generate_key(session, "ec" if curve == "p-256" else "p-384", label, store=True)
    return out


@pytest.mark.parametrize("name", ["rsa-pkcs1-sha256", "rsa-pkcs1-sha384", "rsa-pkcs1-sha512",
                                  "rsa-pss-sha256", "rsa-pss-sha512"])
def test_rsa_signatures_verify_with_cryptography(hsm: HsmSigner, demo_token: Path, name: str) -> None:
    cert = _cert(demo_token, "ac-personnes")
    key = hsm.key("ac-personnes", cert, SignatureAlgorithm.parse(name))
    data = b"TBSCertList bytes " * 100
    signature = key.sign(data)
    algo = key.algorithm
    if algo.scheme == "pkcs1":
        cert.public_key().verify(signature, data, padding.PKCS1v15(), algo.cryptography_hash())  # type: ignore[call-arg]
    else:
        pss = padding.PSS(padding.MGF1(algo.cryptography_hash()), algo.digest_size)
        cert.public_key().verify(signature, data, pss, algo.cryptography_hash())  # type: ignore[call-arg]


def test_algorithm_identifiers_are_the_standard_encodings() -> None:
    assert SignatureAlgorithm.parse("rsa-pkcs1-sha256").algorithm_identifier_der().hex() == \
        "300d06092a864886f70d01010b0500"
    assert SignatureAlgorithm.parse("ecdsa-sha256").algorithm_identifier_der().hex() == "300a06082a8648ce3d040302"
    assert SignatureAlgorithm.parse("ecdsa-sha384").algorithm_identifier_der().hex() == "300a06082a8648ce3d040303"
    with pytest.raises(ValueError, match="unknown signature algorithm"):
        SignatureAlgorithm.parse("rsa-md5")


@pytest.mark.parametrize("curve,hash_name", [("p-256", "sha256"), ("p-384", "sha384")])
def test_ecdsa_signatures_are_der_and_verify(hsm: HsmSigner, ec_keys: dict[str, bytes], curve: str,
                                             hash_name: str) -> None:
    if curve not in ec_keys:
        pytest.fail("EC test key missing from the token")
    public = load_der_public_key(ec_keys[curve])
    key = issuance.signer_for_spki(hsm, f"test-{curve}", ec_keys[curve], curve)
    assert key.algorithm.hash == hash_name
    data = b"ResponseData" * 50
    signature = key.sign(data)
    assert signature[0] == 0x30  # DER Ecdsa-Sig-Value, not raw r||s
    public.verify(signature, data, ec.ECDSA(getattr(hashes, hash_name.upper())()))  # type: ignore[union-attr,call-arg]


def test_large_input_is_hashed_on_the_host_and_streamed(hsm: HsmSigner, demo_token: Path) -> None:
    cert = _cert(demo_token, "ac-personnes")
    key = hsm.key("ac-personnes", cert)
    chunk = b"\x30\x82" * 512 * 1024  # 1 MiB
    signature = key.sign(iter([chunk] * 50))  # 50 MiB, never one bytes object
    cert.public_key().verify(signature, chunk * 50, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[call-arg]


def test_wrong_key_for_certificate_is_caught(hsm: HsmSigner, demo_token: Path) -> None:
    key = hsm.key("ac-structures", _cert(demo_token, "ac-personnes"))
    with pytest.raises(SignatureCheckFailed, match="wrong key label or certificate"):
        key.sign(b"x")


def test_unknown_key_label(hsm: HsmSigner, demo_token: Path) -> None:
    with pytest.raises(KeyNotFound, match="no private key labelled 'nope'"):
        hsm.key("nope", _cert(demo_token, "ac-personnes")).sign(b"x")


def test_issuer_keys_are_sensitive_and_not_extractable(hsm: HsmSigner) -> None:
    with hsm.admin_session() as session:
        for label in ("ac-personnes", "ac-structures", "ocsp-ac-personnes"):
            key = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=label)
            assert key[pkcs11.Attribute.SENSITIVE] is True
            assert key[pkcs11.Attribute.EXTRACTABLE] is False
            with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                key[pkcs11.Attribute.PRIVATE_EXPONENT]


def test_recovers_after_sessions_closed_underneath(hsm: HsmSigner, demo_token: Path) -> None:
    cert = _cert(demo_token, "ac-personnes")
    key = hsm.key("ac-personnes", cert)
    key.sign(b"before")
    relogins = hsm.stats.relogins
    hsm._close_all_sessions_underneath()
    key.sign(b"after")  # no exception: the signer re-opened and logged in again
    assert hsm.stats.relogins > relogins


def test_recovers_after_logout_underneath(hsm: HsmSigner, demo_token: Path) -> None:
    """A logout by another session of this application logs every session out: the next signature
    logs in again, and what it returns is a valid signature."""
    cert = _cert(demo_token, "ac-personnes")
    key = hsm.key("ac-personnes", cert)
    key.sign(b"before")
    relogins = hsm.stats.relogins
    with hsm.admin_session() as session:
        hsm._module.raw.logout(session.handle)
    signature = key.sign(b"after logout")
    assert hsm.stats.relogins > relogins
    cert.public_key().verify(signature, b"after logout", padding.PKCS1v15(), hashes.SHA256())  # type: ignore[call-arg]


class _Spy:
    """Counts the calls of a method it wraps (and may alter what it returns)."""

    def __init__(self, fn: Any, alter: Any = None) -> None:
        self.fn, self.alter, self.calls = fn, alter, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        out = self.fn(*args, **kwargs)
        return self.alter(out) if self.alter is not None else out


def test_the_direct_path_signs_alone_and_a_lost_session_falls_back_to_the_recovery(
        hsm: HsmSigner, demo_token: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a session found the key, signatures skip the general path (``_with_session``); a session closed
    underneath makes the direct attempt fail, and the same call recovers through the general path."""
    cert = _cert(demo_token, "ac-personnes")
    key = hsm.key("ac-personnes", cert)
    key.sign(b"warm")
    general = _Spy(hsm._with_session)
    monkeypatch.setattr(hsm, "_with_session", general)
    for i in range(5):
        key.sign(b"direct %d" % i)
    assert general.calls == 0
    relogins, signatures = hsm.stats.relogins, hsm.stats.signatures
    hsm._close_all_sessions_underneath()
    signature = key.sign(b"after")
    assert general.calls == 1 and hsm.stats.relogins > relogins and hsm.stats.signatures == signatures + 1
    cert.public_key().verify(signature, b"after", padding.PKCS1v15(), hashes.SHA256())  # type: ignore[call-arg]
    key.sign(b"direct again")
    assert general.calls == 1


def test_a_module_initialised_again_is_not_signed_through_with_old_handles(
        hsm: HsmSigner, demo_token: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert = _cert(demo_token, "ac-personnes")
    key = hsm.key("ac-personnes", cert)
    key.sign(b"warm")
    direct = _Spy(hsm._module.raw.sign_into)
    monkeypatch.setattr(hsm._module.raw, "sign_into", direct)
    relogins = hsm.stats.relogins
    assert hsm._module.reinitialize(force=True)
    signature = key.sign(b"new generation")
    assert hsm.stats.relogins == relogins + 1  # a new session, not the abandoned handle
    cert.public_key().verify(signature, b"new generation", padding.PKCS1v15(), hashes.SHA256())  # type: ignore[call-arg]
    assert direct.calls == 1  # the general path's one raw attempt, on the new session


def test_a_bad_signature_from_the_direct_path_is_refused(hsm: HsmSigner, demo_token: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """What a faulty token returns (here one bit flipped) never leaves the signer, on the direct path too."""
    key = hsm.key("ac-personnes", _cert(demo_token, "ac-personnes"))
    key.sign(b"warm")
    faulty = _Spy(hsm._module.raw.sign_into, lambda sig: bytes([sig[0] ^ 1]) + sig[1:])
    monkeypatch.setattr(hsm._module.raw, "sign_into", faulty)
    with pytest.raises(SignatureCheckFailed):
        key.sign(b"faulty")
    assert faulty.calls == 1


def test_an_unexpected_error_on_the_direct_path_gives_the_session_back(
        hsm: HsmSigner, demo_token: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = hsm.key("ac-personnes", _cert(demo_token, "ac-personnes"))
    key.sign(b"warm")

    def broken(*args: Any) -> bytes:
        raise MemoryError("no buffer")

    monkeypatch.setattr(hsm._module.raw, "sign_into", broken)
    with pytest.raises(MemoryError):
        key.sign(b"broken")
    monkeypatch.undo()
    assert hsm._pool._lent == 0  # the permit is back: the pool has not shrunk by one
    key.sign(b"after")


def test_a_plan_forgotten_meanwhile_is_made_again_without_holding_a_second_session(
        demo_token: Path) -> None:
    """One session only (the pool of a serialised module): falling back from the direct path to a plan that
    was dropped meanwhile (a refused mechanism) must not wait for a second permit while holding the first."""
    hsm = HsmSigner(HsmSettings("/usr/lib/softhsm/libsofthsm2.so", "annuaire-demo",
                                (demo_token / "hsm" / "pin").read_text().strip(), 1,
                                softhsm2_conf=str(demo_token / "hsm" / "softhsm2.conf")))
    try:
        cert = _cert(demo_token, "ac-personnes")
        key = hsm.key("ac-personnes", cert)
        key.sign(b"warm")
        hsm._plans.clear()  # as ``_sign`` does when the module refuses the mechanism, seen between two reads
        sign_into = hsm._module.raw.sign_into
        failures = [CryptokiError("C_SignInit", 0x5)]

        def fail_once(*args: Any) -> bytes:  # the direct attempt fails: the fallback needs the plan
            if failures:
                raise failures.pop()
            return sign_into(*args)

        hsm._module.raw.sign_into = fail_once  # type: ignore[method-assign]
        started = time.monotonic()
        try:
            signature = key.sign(b"planned again")
        finally:
            del hsm._module.raw.sign_into
        assert time.monotonic() - started < 10  # not the pool's 60 s wait for a permit
        cert.public_key().verify(signature, b"planned again", padding.PKCS1v15(), hashes.SHA256())  # type: ignore[call-arg]
        assert hsm._pool._lent == 0
    finally:
        hsm.close()


def test_a_key_planned_for_another_algorithm_after_its_session_was_lost_recovers(demo_token: Path) -> None:
    """The session remembers the key (found for a first algorithm); reading its allowed mechanisms for a
    second algorithm on a session closed underneath is a lost session, recovered, not "unavailable"."""
    hsm = _signer(demo_token)
    try:
        cert = _cert(demo_token, "ac-personnes")
        hsm.key("ac-personnes", cert).sign(b"sha-256")
        hsm._close_all_sessions_underneath()
        relogins = hsm.stats.relogins
        signature = hsm.key("ac-personnes", cert, SignatureAlgorithm.parse("rsa-pkcs1-sha384")).sign(b"sha-384")
        assert hsm.stats.relogins > relogins
        cert.public_key().verify(signature, b"sha-384", padding.PKCS1v15(), hashes.SHA384())  # type: ignore[call-arg]
    finally:
        hsm.close()


_SCRIPT_PRELUDE = """
import os, sys, threading, time
from pathlib import Path
from cryptography import x509
from directory.hsm.signer import HsmSettings, HsmSigner, HsmUnavailable
demo = Path(sys.argv[1])
hsm = HsmSigner(HsmSettings("/usr/lib/softhsm/libsofthsm2.so", "annuaire-demo",
                            (demo / "hsm" / "pin").read_text().strip(), 4,
                            softhsm2_conf=str(demo / "hsm" / "softhsm2.conf")))
cert = x509.load_pem_x509_certificate((demo / "ca" / "ac-personnes.pem").read_bytes())
key = hsm.key("ac-personnes", cert)
"""


def _run_script(body: str, demo: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    code = _SCRIPT_PRELUDE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code, str(demo)], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parent.parent)


def test_threads_sign_thousands_of_times_without_crashing(demo: Path) -> None:
    """Run in a child process: without OS locking SoftHSM2 corrupts its heap and the process dies."""
    result = _run_script("""
        errors = []
        def work():
            try:
                for i in range(800):
                    key.sign(b"x%d" % i)
            except Exception as exc:
                errors.append(exc)
        threads = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print("signatures", hsm.stats.signatures, "errors", errors)
        sys.exit(1 if errors else 0)
    """, demo.parent)
    assert result.returncode == 0, f"child died with {result.returncode}: {result.stderr[-2000:]}"
    assert "signatures 3200 errors []" in result.stdout


def test_token_disappears_and_returns(demo: Path) -> None:
    result = _run_script("""
        key.sign(b"present")
        hsm.check(["ac-personnes"])
        tokens = demo / "hsm" / "tokens"
        tokens.rename(demo / "hsm" / "tokens.away"); tokens.mkdir()
        hsm._close_all_sessions_underneath()
        try:
            key.sign(b"gone")
            print("SIGNED WHILE GONE"); sys.exit(1)
        except HsmUnavailable as exc:
            print("unavailable:", exc)
        try:
            hsm.check(["ac-personnes"])  # readiness sees it too, as "unavailable", not as a missing key
            print("CHECK PASSED WHILE GONE"); sys.exit(1)
        except HsmUnavailable as exc:
            print("check unavailable")
        tokens.rmdir(); (demo / "hsm" / "tokens.away").rename(tokens)
        deadline = time.monotonic() + 10
        while True:
            try:
                hsm.check(["ac-personnes"])
                key.sign(b"back"); print("recovered"); break
            except HsmUnavailable:
                if time.monotonic() > deadline: raise
                time.sleep(0.2)
    """, demo.parent)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "unavailable: token 'annuaire-demo' not found" in result.stdout
    assert "recovered" in result.stdout and "check unavailable" in result.stdout
    pin = (demo.parent / "hsm" / "pin").read_text().strip()
    assert pin not in result.stdout + result.stderr


def test_ecdsa_der_conversion_matches_asn1crypto() -> None:
    import os

    from asn1crypto import algos

    from directory.hsm.signer import ecdsa_der

    cases = [os.urandom(64) for _ in range(500)] + [os.urandom(96) for _ in range(200)]
    cases += [os.urandom(132) for _ in range(200)]  # P-521: a sequence longer than 127 octets
    cases += [b"\x00" * 10 + os.urandom(54), b"\x80" + os.urandom(63), b"\x00" * 64, b"\x01" + b"\x00" * 63,
              b"\x00" * 31 + b"\x80" + b"\x00" * 31 + b"\x7f"]
    for raw in cases:
        assert ecdsa_der(raw) == algos.DSASignature.from_p1363(raw).dump()
