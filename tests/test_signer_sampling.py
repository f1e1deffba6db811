"""Sampled verification of ECDSA signatures (``directory.hsm.keys.Verification``) on a real SoftHSM2 token.

The rule: every signature is verified until ``first`` in a row have verified since the last trust reset
(a session opened, an HSM error, a re-initialisation, a failed verification), then one in ``sample``.
RSA signatures are always all verified. A key label that comes to name another key is caught at the
first signature made with it, however long the key had been signing well.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from directory.demo import issuance
from directory.hsm.signer import SAMPLED, HsmSettings, HsmSigner, KeySigner, SignatureCheckFailed, Verification

GENUINE, IMPOSTOR = "sampled-genuine", "sampled-impostor"


@pytest.fixture()
def token(demo: Path) -> Iterator[tuple[HsmSigner, dict[str, bytes]]]:
    """A signer on a private copy of the demo token, with two P-256 keys of its own (label -> SPKI)."""
    directory = demo.parent
    hsm = HsmSigner(HsmSettings("/usr/lib/softhsm/libsofthsm2.so", "annuaire-demo",
                                (directory / "hsm" / "pin").read_text().strip(), 2,
                                softhsm2_conf=str(directory / "hsm" / "softhsm2.conf")))
    with hsm.admin_session() as session:
        spkis = {label: issuance.generate_key(session, "ec", label, store=True) for label in (GENUINE, IMPOSTOR)}
    yield hsm, spkis
    hsm.close()


def _signer(hsm: HsmSigner, spki: bytes, policy: Verification) -> KeySigner:
    return KeySigner(hsm, GENUINE, load_der_public_key(spki), None, "test", policy)


def _relabel(hsm: HsmSigner, renames: list[tuple[str, str]]) -> None:
    with hsm.admin_session() as session:
        for old, new in renames:
            key = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=old)
            key[pkcs11.Attribute.LABEL] = new


def test_every_signature_until_first_then_one_in_sample_and_all_again_after_a_relogin(
        token: tuple[HsmSigner, dict[str, bytes]]) -> None:
    hsm, spkis = token
    key = _signer(hsm, spkis[GENUINE], Verification(first=5, sample=4))
    public = load_der_public_key(spkis[GENUINE])
    for i in range(5):
        key.sign(b"first %d" % i)
    assert key.verified == 5
    signatures = [(b"then %d" % i, key.sign(b"then %d" % i)) for i in range(40)]
    assert key.verified == 5 + 10  # one in four
    for data, signature in signatures:  # the ones not verified by the signer are good too (healthy token)
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))  # type: ignore[union-attr,call-arg]
    hsm._close_all_sessions_underneath()  # sessions lost: the next one logs in and looks the key up again
    for i in range(5):
        key.sign(b"after %d" % i)
    assert key.verified == 15 + 5


def test_a_label_moved_to_another_key_is_caught_at_its_first_signature(
        token: tuple[HsmSigner, dict[str, bytes]]) -> None:
    """Faulty-signature injection on real keys: after thousands of good signatures (sampling at 1 in 10,000),
    the label comes to name another key of the token; the first signature made with it is refused."""
    hsm, spkis = token
    key = _signer(hsm, spkis[GENUINE], Verification(first=3, sample=10_000))
    for i in range(50):
        key.sign(b"good %d" % i)
    verified = key.verified
    assert verified <= 4  # sampling is on: a bad signature now would most likely not be looked at...
    _relabel(hsm, [(GENUINE, "sampled-genuine-moved"), (IMPOSTOR, GENUINE)])
    # ...but the open sessions still hold the genuine key's handle: their signatures are good
    key.sign(b"still the genuine key")
    hsm._close_all_sessions_underneath()  # a new session looks the label up again: the impostor
    with pytest.raises(SignatureCheckFailed, match="wrong key label or certificate"):
        key.sign(b"signed by the impostor")
    with pytest.raises(SignatureCheckFailed):  # and every signature after it, until the label is right again
        key.sign(b"again the impostor")
    _relabel(hsm, [(GENUINE, IMPOSTOR), ("sampled-genuine-moved", GENUINE)])
    hsm._close_all_sessions_underneath()
    key.sign(b"the genuine key is back")


def test_rsa_signatures_are_all_verified_whatever_the_policy(token: tuple[HsmSigner, dict[str, bytes]],
                                                             demo: Path) -> None:
    hsm, _ = token
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((demo.parent / "ca" / "ocsp-ac-personnes.pem").read_bytes())
    key = hsm.key("ocsp-ac-personnes", cert, verification=SAMPLED)
    for i in range(20):
        key.sign(b"%d" % i)
    assert key.verified == 20
