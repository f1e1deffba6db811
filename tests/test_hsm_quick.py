"""``cryptoki.Quick``: a Cryptoki call is made with the GIL held only while it stays quick."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from directory.hsm import cryptoki
from directory.hsm.cryptoki import QUICK_CALL, Quick
from directory.hsm.signer import HsmSettings, HsmSigner


def test_quick_calls_stay_held_and_a_lone_slow_one_is_forgiven() -> None:
    quick = Quick()
    for _ in range(100):
        quick.took(QUICK_CALL / 5)
    quick.took(QUICK_CALL * 2)  # the thread was preempted once
    assert quick.held
    quick.took(QUICK_CALL / 5)
    quick.took(QUICK_CALL * 2)
    assert quick.held


def test_slow_calls_are_released_then_probed_less_and_less_often() -> None:
    quick = Quick()
    quick.took(QUICK_CALL * 2)
    assert quick.held  # one slow call may be the host's doing
    quick.took(QUICK_CALL * 2)
    assert not quick.held  # two in a row: the call is slow
    waits = []
    for _ in range(4):
        n = 0
        while not quick.held:
            quick.released()
            n += 1
        waits.append(n)
        quick.took(QUICK_CALL * 2)  # the probe: slow again, released again at once
        assert not quick.held
    assert waits == [1024, 2048, 4096, 8192]


def test_one_very_slow_call_is_enough_and_a_quick_probe_restores_holding() -> None:
    quick = Quick()
    quick.took(QUICK_CALL * 100)  # a network round trip: never twice in a row with the GIL held
    assert not quick.held
    while not quick.held:
        quick.released()
    quick.took(QUICK_CALL / 5)
    assert quick.held and quick.interval == 1024
    quick.took(QUICK_CALL * 2)
    assert quick.held


def _signer(demo: Path) -> HsmSigner:
    return HsmSigner(HsmSettings("/usr/lib/softhsm/libsofthsm2.so", "annuaire-demo",
                                 (demo / "hsm" / "pin").read_text().strip(), 2,
                                 softhsm2_conf=str(demo / "hsm" / "softhsm2.conf")))


def test_a_slow_module_is_signed_with_the_gil_released(demo_token: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call counted as slow (QUICK_CALL 0): after two GIL-held calls each function goes the releasing
    way, and the signatures stay good."""
    hsm = _signer(demo_token)
    try:
        monkeypatch.setattr(cryptoki, "QUICK_CALL", 0.0)
        key = hsm.key("ac-personnes", x509.load_pem_x509_certificate(
            (demo_token / "ca" / "ac-personnes.pem").read_bytes()))
        mechanism = hsm._module.raw.mechanism(0x1)  # CKM_RSA_PKCS, the key's raw mechanism
        monkeypatch.setattr(mechanism, "init", Quick())  # put back afterwards: the module is the process's
        monkeypatch.setattr(mechanism, "sign", Quick())
        held, released = [], []
        for name, target in (("_sign_init_held", held), ("_sign_held", held), ("_sign_init", released),
                             ("_sign", released)):
            fn = getattr(hsm._module.raw, name)
            monkeypatch.setattr(hsm._module.raw, name,
                                lambda *a, _fn=fn, _t=target, _n=name: (_t.append(_n), _fn(*a))[1])
        for i in range(6):
            key.sign(b"slow %d" % i)  # verified: a bad signature would raise
        assert held == ["_sign_init_held", "_sign_held"] * 2
        assert released == ["_sign_init", "_sign"] * 4
        assert not mechanism.init.held and not mechanism.sign.held
    finally:
        hsm.close()


def test_only_an_in_process_software_module_is_called_with_the_gil_held(demo_token: Path) -> None:
    """SoftHSM2 signs on this CPU: quick calls may keep the GIL. A network HSM, a TPM or a card may stall, and a
    stall with the GIL held would stop every thread, the event loop serving held answers included."""
    from directory.hsm.module import computes_in_process

    assert computes_in_process("SoftHSM                         ")
    for other in ("Thales", "Utimaco IS GmbH", "tpm2-software.github.io", "OpenSC Project", "", "softhsm"):
        assert not computes_in_process(other)
    hsm = _signer(demo_token)
    try:
        assert hsm._module.raw.held_calls  # this very module is SoftHSM2
    finally:
        hsm.close()


def test_a_module_that_may_stall_is_never_called_with_the_gil_held(demo_token: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    hsm = _signer(demo_token)
    try:
        monkeypatch.setattr(hsm._module.raw, "held_calls", False)  # as for any module but SoftHSM2
        key = hsm.key("ac-personnes", x509.load_pem_x509_certificate(
            (demo_token / "ca" / "ac-personnes.pem").read_bytes()))
        held: list[str] = []
        for name in ("_sign_init_held", "_sign_held"):
            fn = getattr(hsm._module.raw, name)
            monkeypatch.setattr(hsm._module.raw, name, lambda *a, _fn=fn, _n=name: (held.append(_n), _fn(*a))[1])
        for i in range(4):
            key.sign(b"released %d" % i)  # verified: a bad signature would raise
        assert held == []
    finally:
        hsm.close()
