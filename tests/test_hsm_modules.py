"""The signer against two genuinely different PKCS#11 modules: SoftHSM2 and tpm2-pkcs11 (over swtpm).

Each test runs on both tokens: signatures verify with `cryptography`, several threads sign at once in a
child process (a module driven without locking corrupts itself or crashes), lost sessions and logins
come back without re-initialising the module, and what the token offers is read and reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from asn1crypto import keys
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pkcs11.util.ec import encode_ec_public_key
from pkcs11.util.rsa import encode_rsa_public_key

from directory.demo import issuance
from directory.hsm.algorithms import SignatureAlgorithm
from directory.hsm.signer import HsmSettings, HsmSigner, KeySigner
from directory.hsm.softhsm import find_module as softhsm_module
from tests.conftest import ROOT
from tests.tpm2 import Tpm2Simulator, Tpm2Token

KEYS = {"mod-rsa": "rsa", "mod-p256": "p-256", "mod-p384": "p-384"}
TPM2_ALGORITHMS = {"rsa": "rsa2048", "p-256": "ecc256", "p-384": "ecc384"}


@dataclass
class ModuleToken:
    name: str
    settings: HsmSettings
    env: dict[str, str]  # what a child process needs to open the same token
    public_keys: dict[str, bytes]  # label -> SubjectPublicKeyInfo DER


def _public_keys(hsm: HsmSigner) -> dict[str, bytes]:
    out = {}
    with hsm.admin_session() as session:
        for label in KEYS:
            pub = session.get_key(object_class=pkcs11.ObjectClass.PUBLIC_KEY, label=label)
            if pub.key_type == pkcs11.KeyType.RSA:
                rsa_key = keys.RSAPublicKey.load(encode_rsa_public_key(pub))
                out[label] = keys.PublicKeyInfo({"algorithm": {"algorithm": "rsa"}, "public_key": rsa_key}).dump()
            else:
                out[label] = encode_ec_public_key(pub)
    return out


@pytest.fixture(scope="module")
def softhsm_token(demo_token: Path) -> ModuleToken:
    """The pristine demo's SoftHSM2 token, with three test keys made through PKCS#11."""
    settings = HsmSettings(softhsm_module(), "annuaire-demo", (demo_token / "hsm" / "pin").read_text().strip(), 2,
                           softhsm2_conf=str(demo_token / "hsm" / "softhsm2.conf"))
    hsm = HsmSigner(settings)
    with hsm.admin_session() as session:
        for label, kind in KEYS.items():
            if not list(session.get_objects({pkcs11.Attribute.LABEL: label})):
                issuance.generate_key(session, kind, label, store=True)
    token = ModuleToken("softhsm2", settings, {"SOFTHSM2_CONF": settings.softhsm2_conf or ""}, _public_keys(hsm))
    hsm.close()
    return token


@pytest.fixture(scope="module")
def tpm2_keys(tpm2: Tpm2Simulator, tpm2_token: Tpm2Token) -> ModuleToken:
    """The tpm2-pkcs11 token, with three keys made by the token's own tool (tpm2_ptool)."""
    for label, kind in KEYS.items():
        tpm2.add_key(tpm2_token, TPM2_ALGORITHMS[kind], label)
    settings = HsmSettings(tpm2_token.module, tpm2_token.label, tpm2_token.pin(), 2)
    hsm = HsmSigner(settings)
    token = ModuleToken("tpm2", settings, tpm2_token.env, _public_keys(hsm))
    hsm.close()
    return token


@pytest.fixture(params=["softhsm2", "tpm2"])
def token(request: pytest.FixtureRequest) -> ModuleToken:
    return request.getfixturevalue("softhsm_token" if request.param == "softhsm2" else "tpm2_keys")


@pytest.fixture()
def hsm(token: ModuleToken) -> Any:
    signer = HsmSigner(token.settings)
    yield signer
    signer.close()


def _key(hsm: HsmSigner, token: ModuleToken, label: str, algorithm: str | None = None) -> KeySigner:
    return KeySigner(hsm, label, load_der_public_key(token.public_keys[label]),
                     SignatureAlgorithm.parse(algorithm) if algorithm else None, label)


@pytest.mark.parametrize("label,algorithm", [
    ("mod-rsa", "rsa-pkcs1-sha256"), ("mod-rsa", "rsa-pkcs1-sha512"), ("mod-rsa", "rsa-pss-sha256"),
    ("mod-rsa", "rsa-pss-sha384"), ("mod-p256", "ecdsa-sha256"), ("mod-p384", "ecdsa-sha384"),
])
def test_signatures_verify_on_both_modules(hsm: HsmSigner, token: ModuleToken, label: str, algorithm: str) -> None:
    key = _key(hsm, token, label, algorithm)
    signature = key.sign(b"TBSCertList " * 200)
    key.verify_digest(signature, key.algorithm.digest(b"TBSCertList " * 200))  # independent of the signer's check
    public = load_der_public_key(token.public_keys[label])
    assert isinstance(public, rsa.RSAPublicKey if label == "mod-rsa" else ec.EllipticCurvePublicKey)
    assert hsm.plan(label, key.algorithm).token_hashes is False  # both modules offer the raw mechanisms
    assert hsm.stats.errors == 0


def test_capabilities_are_read_and_reported(hsm: HsmSigner, token: ModuleToken) -> None:
    keys = [_key(hsm, token, label) for label in KEYS]
    report = hsm.inspect(keys)
    text = "\n".join(report.lines())
    assert "OS locking (CKF_OS_LOCKING_OK)" in text
    assert report.unusable == [] and all(k.plan is not None for k in report.keys), text
    assert "key 'mod-rsa' (RSA-2048, rsa-pkcs1-sha256): CKM_RSA_PKCS (digest made on the host)" in text
    assert "key 'mod-p384' (EC-384, ecdsa-sha384): CKM_ECDSA (digest made on the host)" in text
    if token.name == "tpm2":  # tpm2-pkcs11 says how many sessions it takes; SoftHSM2 sets no limit
        assert report.token.max_sessions == 1024 and "the token allows 1024 sessions" in report.sessions_reason
    else:
        assert "the token sets no session limit" in report.sessions_reason
    assert report.sessions == 2
    assert json.dumps(report.as_dict())  # check-config --json prints it


def test_lost_sessions_and_login_come_back_without_reinitialising(hsm: HsmSigner, token: ModuleToken) -> None:
    key = _key(hsm, token, "mod-p256")
    key.sign(b"before")
    hsm._close_all_sessions_underneath()
    key.sign(b"after the sessions were closed")
    with hsm.admin_session() as session:
        hsm._module.raw.logout(session.handle)
    key.sign(b"after the logout")
    assert hsm.stats.reinits == 0 and hsm.stats.relogins >= 2


_THREADS = """
import os, sys, threading
from cryptography.hazmat.primitives.serialization import load_der_public_key
from directory.hsm.signer import HsmSettings, HsmSigner, KeySigner
module, label, pin_file, spki, conf, max_concurrent, serialize = sys.argv[1:8]
hsm = HsmSigner(HsmSettings(module, label, open(pin_file).read().strip(), int(max_concurrent),
                            softhsm2_conf=conf or None, serialize=serialize == "1"))
keys = [KeySigner(hsm, name, load_der_public_key(bytes.fromhex(der)), None, name)
        for name, der in (item.split("=") for item in spki.split(","))]
errors, done = [], []
def work(n):
    for i in range(25):
        try:
            keys[(n + i) % len(keys)].sign(b"thread %d signature %d" % (n, i)); done.append(1)
        except Exception as exc:
            errors.append(repr(exc))
threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
print("signed", len(done), "errors", len(errors), "stats-errors", hsm.stats.errors, "reinits", hsm.stats.reinits)
print("locking", hsm._module.locking)
print(sorted(set(errors))[:3])
"""


def run_threads(token: ModuleToken, pin_file: Path, max_concurrent: int = 4, serialize: bool = False,
                labels: tuple[str, ...] = tuple(KEYS), prelude: str = "") -> subprocess.CompletedProcess[str]:
    """8 threads × 25 signatures over the keys ``labels``, in a child process (a crash stays there)."""
    spki = ",".join(f"{label}={token.public_keys[label].hex()}" for label in labels)
    code = textwrap.dedent(prelude) + _THREADS
    return subprocess.run([sys.executable, "-c", code, token.settings.module, token.settings.token_label,
                           str(pin_file), spki, token.settings.softhsm2_conf or "", str(max_concurrent),
                           "1" if serialize else "0"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, **token.env})


def _pin_file(token: ModuleToken, tmp_path: Path) -> Path:
    path = tmp_path / "pin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token.settings.pin)
    return path


def module_errors(text: str) -> list[str]:
    """Lines a module (tpm2-pkcs11, the TSS, SoftHSM2) writes when something went wrong."""
    return [line for line in text.splitlines() if line.startswith(("ERROR", "WARNING:esys", "WARNING:tcti"))
            or "Esys called in bad sequence" in line]


def test_eight_threads_sign_at_once_without_an_error(token: ModuleToken, tmp_path: Path) -> None:
    result = run_threads(token, _pin_file(token, tmp_path))
    assert result.returncode == 0, f"child died with {result.returncode}: {result.stderr[-2000:]}"
    assert "signed 200 errors 0 stats-errors 0 reinits 0" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "locking OS locking" in result.stdout
    assert module_errors(result.stderr) == []


def test_serialize_setting_makes_every_call_wait_its_turn(token: ModuleToken, tmp_path: Path) -> None:
    result = run_threads(token, _pin_file(token, tmp_path), serialize=True, labels=("mod-p256",))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "signed 200 errors 0 stats-errors 0" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "locking serialised: the configuration says serialize = true" in result.stdout
    assert result.stderr.count("every call to it goes through one process-wide lock") == 1  # logged once


def test_a_module_that_cannot_lock_is_serialised(softhsm_token: ModuleToken, tmp_path: Path) -> None:
    """A module answering CKR_CANT_LOCK to CKF_OS_LOCKING_OK (SoftHSM2 made to, here) is initialised without
    the flag and every call goes through one lock: still no error with 8 threads."""
    prelude = """
        from directory.hsm import cryptoki
        _initialize = cryptoki.Cryptoki.initialize
        def refuse_os_locking(self, os_locking):
            return cryptoki.CKR_CANT_LOCK if os_locking else _initialize(self, False)
        cryptoki.Cryptoki.initialize = refuse_os_locking
    """
    result = run_threads(softhsm_token, _pin_file(softhsm_token, tmp_path), prelude=prelude)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "signed 200 errors 0 stats-errors 0" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "locking serialised: the module cannot use OS locking (CKR_CANT_LOCK)" in result.stdout
    assert result.stderr.count("CKR_CANT_LOCK") == 1  # logged once
