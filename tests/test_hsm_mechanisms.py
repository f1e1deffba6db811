"""Choosing the mechanism each key signs with, from what the module offers and what the key allows.

On real SoftHSM2 keys restricted with ``CKA_ALLOWED_MECHANISMS`` (as an HSM key ceremony may do): a key
allowed only a hashing mechanism signs through it (the token reads the data, the signature still verifies);
a key allowed only a mechanism the module lacks is refused with the reason, and the service refuses to
start with it."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from asn1crypto import keys
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pkcs11 import Attribute, Mechanism
from pkcs11.attributes import AttributeMapper
from pkcs11.util.rsa import encode_rsa_public_key

from directory.hsm.algorithms import SignatureAlgorithm
from directory.hsm.capabilities import CKF_SIGN, KeyFacts, Plan, choose, session_budget
from directory.hsm.cryptoki import CK_EFFECTIVELY_INFINITE, CK_UNAVAILABLE_INFORMATION, MechanismInfo, TokenInfo
from directory.hsm.signer import HsmSettings, HsmSigner, KeySigner, KeyUnusable
from directory.hsm.softhsm import find_module
from tests.conftest import ROOT, run_cli

SIGN = MechanismInfo(1024, 4096, CKF_SIGN)
PKCS1 = SignatureAlgorithm.parse("rsa-pkcs1-sha256")
ECDSA = SignatureAlgorithm.parse("ecdsa-sha256")


def test_raw_mechanism_first_then_the_hashing_one() -> None:
    rsa = KeyFacts("rsa", True, None)
    assert choose("k", PKCS1, rsa, {0x1: SIGN, 0x40: SIGN}) == Plan(0x1, False)
    assert choose("k", PKCS1, rsa, {0x40: SIGN}) == Plan(0x40, True)
    assert choose("k", PKCS1, KeyFacts("rsa", True, frozenset({0x40})), {0x1: SIGN, 0x40: SIGN}) == Plan(0x40, True)
    assert choose("k", ECDSA, KeyFacts("ec", True, None), {0x1041: SIGN}).describe() == \
        "CKM_ECDSA (digest made on the host)"


@pytest.mark.parametrize("facts,offered,reason", [
    (KeyFacts("ec", True, None), {0x1: SIGN, 0x40: SIGN},
     "key 'k' cannot sign as ecdsa-sha256 with this module: CKM_ECDSA: the module does not offer it; "
     "CKM_ECDSA_SHA256: the module does not offer it"),
    (KeyFacts("ec", True, frozenset({0x1044})), {0x1041: SIGN},
     "CKM_ECDSA: not in the key's CKA_ALLOWED_MECHANISMS; CKM_ECDSA_SHA256: the module does not offer it"),
    (KeyFacts("ec", True, None), {0x1041: MechanismInfo(0, 0, 0)}, "CKM_ECDSA: the module offers it, but not for"),
    (KeyFacts("rsa", True, None), {0x1041: SIGN}, "key 'k' is a RSA key in the token, but its certificate"),
    (KeyFacts("ec", False, None), {0x1041: SIGN}, "has CKA_SIGN false"),
])
def test_a_key_that_cannot_sign_as_configured_is_refused_with_the_reason(facts: KeyFacts, offered: dict,
                                                                        reason: str) -> None:
    with pytest.raises(KeyUnusable) as refused:
        choose("k", ECDSA, facts, offered)
    assert reason in str(refused.value)


def _info(max_sessions: int) -> TokenInfo:
    return TokenInfo("t", "m", "model", "1", 0, max_sessions, 0, max_sessions, 0)


def test_session_pool_follows_the_token_limit() -> None:
    assert session_budget(8, _info(CK_EFFECTIVELY_INFINITE), False)[0] == 8
    assert session_budget(8, _info(CK_UNAVAILABLE_INFORMATION), False)[0] == 8
    size, reason = session_budget(8, _info(3), False)
    assert size == 3 and "the token allows 3 sessions per application, fewer than max_concurrent = 8" in reason
    assert session_budget(8, _info(1024), True) == (1, "serialised module: one session")


def _mapper() -> AttributeMapper:
    mapper = AttributeMapper()  # python-pkcs11 cannot write CKA_ALLOWED_MECHANISMS by itself
    mapper.register_handler(Attribute.ALLOWED_MECHANISMS,
                            lambda ms: b"".join(struct.pack("L", int(m)) for m in ms),
                            lambda b: [m for (m,) in struct.iter_unpack("L", b)])
    return mapper


@pytest.fixture()
def restricted(demo_token: Path) -> Iterator[tuple[HsmSigner, Any]]:
    """A signer on the demo token and a session of ours to create session keys (gone when it closes)."""
    hsm = HsmSigner(HsmSettings(find_module(), "annuaire-demo", (demo_token / "hsm" / "pin").read_text().strip(), 2,
                                softhsm2_conf=str(demo_token / "hsm" / "softhsm2.conf")))
    session = hsm._module.lib.get_token(token_label="annuaire-demo").open(rw=True, attribute_mapper=_mapper())
    hsm._module.raw.login(session.handle, hsm.settings.pin.encode())
    yield hsm, session
    session.close()
    hsm.close()


def test_key_allowed_only_a_hashing_mechanism_signs_through_it(restricted: tuple[HsmSigner, Any],
                                                               tmp_path: Path) -> None:
    hsm, session = restricted

    pub, _ = session.generate_keypair(pkcs11.KeyType.RSA, 2048, label="only-sha256-rsa", store=False,
                                      private_template={Attribute.SIGN: True,
                                                        Attribute.ALLOWED_MECHANISMS: [Mechanism.SHA256_RSA_PKCS]})
    spki = keys.PublicKeyInfo({"algorithm": {"algorithm": "rsa"},
                               "public_key": keys.RSAPublicKey.load(encode_rsa_public_key(pub))}).dump()
    key = KeySigner(hsm, "only-sha256-rsa", load_der_public_key(spki), PKCS1, "test")
    assert hsm.plan(key.label, PKCS1) == Plan(0x40, True)
    key.sign(b"OCSP ResponseData" * 10)  # verified inside against the public key
    key.sign(iter([b"a" * 100_000, b"b" * 100_000]))  # a stream: the token hashes it in parts
    tbs = tmp_path / "tbs"
    tbs.write_bytes(b"TBSCertList" * 50_000)
    digest = hashlib.sha256(tbs.read_bytes()).digest()
    key.sign_digest(digest, source=lambda: iter([tbs.read_bytes()[:300_000], tbs.read_bytes()[300_000:]]))
    with pytest.raises(KeyUnusable, match=r"only with CKM_SHA256_RSA_PKCS \(the token hashes the data\).*only the"):
        key.sign_digest(digest)
    with pytest.raises(KeyUnusable, match="CKM_RSA_PKCS_PSS: not in the key's CKA_ALLOWED_MECHANISMS; "
                                          "CKM_SHA256_RSA_PKCS_PSS: not in the key's CKA_ALLOWED_MECHANISMS"):
        KeySigner(hsm, key.label, key.public_key, SignatureAlgorithm.parse("rsa-pss-sha256"), "t").sign(b"x")
    with pytest.raises(KeyUnusable, match="CKM_SHA512_RSA_PKCS: not in the key's CKA_ALLOWED_MECHANISMS"):
        KeySigner(hsm, key.label, key.public_key, SignatureAlgorithm.parse("rsa-pkcs1-sha512"), "t").sign(b"x")


_RESTRICTED_OCSP_KEY = """
import sys
from pathlib import Path
from cryptography import x509
import pkcs11
from pkcs11 import Attribute, Mechanism
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters
from directory.demo import issuance
from directory.hsm.signer import HsmSettings, HsmSigner
demo = Path(sys.argv[1])
hsm = HsmSigner(HsmSettings(sys.argv[2], "annuaire-demo", (demo / "hsm" / "pin").read_text().strip(), 2,
                            softhsm2_conf=str(demo / "hsm" / "softhsm2.conf")))
session = hsm._module.lib.get_token(token_label="annuaire-demo").open(rw=True, attribute_mapper=MAPPER)
hsm._module.raw.login(session.handle, hsm.settings.pin.encode())
params = session.create_domain_parameters(pkcs11.KeyType.EC, {
    Attribute.EC_PARAMS: encode_named_curve_parameters("1.2.840.10045.3.1.7")}, local=True)
pub, _ = params.generate_keypair(label="ocsp-restricted", store=True, private_template={
    Attribute.SIGN: True, Attribute.SENSITIVE: True, Attribute.ALLOWED_MECHANISMS: [Mechanism.ECDSA_SHA256]})
spki = encode_ec_public_key(pub)
session.close()
ca_cert = x509.load_pem_x509_certificate((demo / "ca" / "ac-personnes.pem").read_bytes())
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
ca_spki = ca_cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
ca = issuance.CertificateAuthority("ac-personnes", ca_cert.subject, hsm.key("ac-personnes", ca_cert), ca_spki,
                                   ca_cert)
now = issuance.utcnow()
cert = issuance.issue(ca, x509.Name.from_rfc4514_string("CN=OCSP restricted,O=DEMO,C=FR"), spki,
                      now - issuance.days(1), now + issuance.days(30),
                      issuance.end_entity_extensions(ca, spki, "ocsp-signing", [], [], [], None, None))
(demo / "ca" / "ocsp-restricted.pem").write_bytes(issuance.pem(cert))
hsm.close()
"""


def test_service_refuses_at_start_a_key_the_module_cannot_sign_with(demo: Path) -> None:
    """A P-256 OCSP key allowed only CKM_ECDSA_SHA256, which SoftHSM2 does not have: check-config says why
    and exits 1; `annuaire serve` refuses to start, naming the key and the mechanisms."""
    demo_dir = demo.parent
    mapper = "from tests.test_hsm_mechanisms import _mapper\nMAPPER = _mapper()\n"
    made = subprocess.run([sys.executable, "-c", mapper + textwrap.dedent(_RESTRICTED_OCSP_KEY), str(demo_dir),
                           find_module()], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    text = demo.read_text()
    demo.write_text(text.replace('signer_certificate = "ca/ocsp-ac-personnes.pem"\nsigner_key_label = '
                                 '"ocsp-ac-personnes"', 'signer_certificate = "ca/ocsp-restricted.pem"\n'
                                 'signer_key_label = "ocsp-restricted"'))
    reason = ("key 'ocsp-restricted' cannot sign as ecdsa-sha256 with this module: CKM_ECDSA: not in the key's "
              "CKA_ALLOWED_MECHANISMS; CKM_ECDSA_SHA256: the module does not offer it")
    check = run_cli("check-config", "-c", str(demo))
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"key 'ocsp-restricted' (EC-256, ecdsa-sha256): REFUSED: {reason}" in check.stdout
    assert "key 'ac-personnes' (RSA-2048, rsa-pkcs1-sha256): CKM_RSA_PKCS" in check.stdout
    served = run_cli("serve", "-c", str(demo), timeout=60)
    assert served.returncode == 1, served.stdout + served.stderr
    assert f"KeyUnusable: the HSM cannot sign as configured: {reason}" in served.stderr
    assert "listening" not in served.stderr


def test_check_config_reports_the_token_or_skips_it_offline(demo_pristine: Path) -> None:
    config = str(demo_pristine / "annuaire.toml")
    online = run_cli("check-config", "-c", config, "--json")
    assert online.returncode == 0, online.stderr
    hsm = json.loads(online.stdout)["hsm"]
    assert hsm["locking"] == "OS locking (CKF_OS_LOCKING_OK)" and hsm["token"]["max_sessions"] == "no limit"
    assert {k["label"]: k["mechanism"] for k in hsm["keys"]}["ac-personnes"] == "CKM_RSA_PKCS"
    offline = run_cli("check-config", "-c", config, "--offline")
    assert offline.returncode == 0 and "PKCS#11" not in offline.stdout and ": OK (3 issuers)" in offline.stdout
