"""Health tells the truth (issue 14 §7), on a served demo (real slapd, SoftHSM, registry):

- every status change is observed once in each channel of `annuaire_revocation_visibility_seconds`
  (OCSP, CRL, directory): the same count in all three, changes superseded at once (a hold made final, a
  hold released) included, none counted twice; a change committed while the service was down (and put in
  a CRL by `annuaire crl build` meanwhile) is observed once by each channel after the restart, and the
  demo's own revocations, older than the service, by none;
- a drift found by `annuaire ldap verify` is a problem until a full synchronisation repairs it, then not.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import ldap3

from directory.config import load_config
from tests.conftest import run_cli
from tests.served import Served, http, serve

CHANNELS = ("ocsp", "crl", "ldap")


def _wait(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def _metric(served: Served, series: str) -> float:
    body = http(served.base + "/metrics")[2].decode()
    match = re.search(rf"^{re.escape(series)} (\S+)$", body, re.M)
    return float(match.group(1)) if match else 0.0


def _observed(served: Served) -> dict[str, int]:
    return {c: int(_metric(served, f'annuaire_revocation_visibility_seconds_count{{channel="{c}"}}'))
            for c in CHANNELS}


def _cli(demo: Path, *args: str) -> None:
    result = run_cli(*args, "-c", str(demo))
    assert result.returncode == 0, result.stdout + result.stderr


def _problems(demo: Path) -> list[dict[str, str]]:
    data = json.loads(run_cli("status", "-c", str(demo), "--json", "--all", check=True).stdout)
    return data["health"]["problems"]


def test_each_status_change_is_observed_once_per_channel_and_drift_clears(demo: Path) -> None:
    manifest = json.loads((demo.parent / "certs" / "manifest.json").read_text())
    good = {issuer: [m["serial_hex"] for m in manifest if m["issuer"] == issuer and m.get("status", "good") == "good"]
            for issuer in ("ac-personnes", "ac-structures")}
    a, b, c, e = good["ac-personnes"][:4]
    d = good["ac-structures"][0]

    def revoke(issuer: str, serial: str, reason: str) -> None:
        _cli(demo, "revoke", "--issuer", issuer, "--serial", serial, "--reason", reason)

    with serve(demo) as served:
        _wait(lambda: json.loads(http(served.base + "/status.json")[2])["health"]["ok"], 30, "a healthy start")
        assert _observed(served) == {"ocsp": 0, "crl": 0, "ldap": 0}  # the demo's revocations predate the service
        revoke("ac-personnes", a, "keyCompromise")
        revoke("ac-personnes", b, "certificateHold")
        revoke("ac-personnes", b, "keyCompromise")  # the hold made final: two changes
        revoke("ac-personnes", c, "certificateHold")
        _cli(demo, "release-hold", "--issuer", "ac-personnes", "--serial", c)  # two changes, back to good
        revoke("ac-structures", d, "superseded")
        six = {channel: 6 for channel in CHANNELS}
        _wait(lambda: _observed(served) == six, 30, f"six changes in every channel: {_observed(served)}")
        time.sleep(3)  # later passes, builds and re-signatures observe nothing again
        assert _observed(served) == six

        # a value removed from the directory by hand: verify finds it, a full synchronisation repairs it
        config = load_config(demo)
        assert config.ldap is not None and config.ldap.password_file is not None
        bind = (config.ldap.bind_dn, config.ldap.password_file.read_text().strip())
        with ldap3.Connection(ldap3.Server(served.ldap_url), *bind, auto_bind=True) as conn:
            conn.search("ou=Personnes,o=sante,c=fr", "(userCertificate;binary=*)",
                        attributes=["userCertificate;binary"])
            entry = conn.entries[0]
            value = entry["userCertificate;binary"].values[0]
            assert conn.modify(entry.entry_dn, {"userCertificate;binary": [(ldap3.MODIFY_DELETE, [value])]})
        assert run_cli("ldap", "verify", "-c", str(demo)).returncode == 1
        drift = [p for p in _problems(demo) if p["part"] == "ldap"]
        assert drift and "the last verify found 1 differences, not repaired yet" in drift[0]["text"], drift
        assert _metric(served, "annuaire_ldap_drift_outstanding") == 1
        _cli(demo, "ldap", "sync", "--full")
        assert _problems(demo) == []
        assert _metric(served, "annuaire_ldap_drift_outstanding") == 0
        assert _metric(served, "annuaire_ldap_drift_found") == 1  # what that verify found, still said
        assert run_cli("ldap", "verify", "-c", str(demo)).returncode == 0

    # while the service is down: a revocation, and a CRL listing it built by hand
    revoke("ac-personnes", e, "keyCompromise")
    _cli(demo, "crl", "build", "--issuer", "ac-personnes")
    with serve(demo) as served:
        after = {"ocsp": 1, "crl": 1, "ldap": 7}  # this process's own counts; the directory's are kept
        _wait(lambda: _observed(served) == after, 30, f"the change made meanwhile, once: {_observed(served)}")
        time.sleep(3)
        assert _observed(served) == after


def test_ocsp_observes_a_deferred_change_once_when_it_is_finally_signed() -> None:
    """The ledger on its own: a change the poller could not sign (HSM away) is observed when the pre-signing
    loop signs it; two changes of one certificate are observed together; what is kept in the registry
    brings pending changes back after a restart, and nothing is observed twice."""
    from ocsp.visibility import VisibilityLedger

    seen: list[float] = []
    now = [100.0]
    ledger = VisibilityLedger.restore(None, lambda: 7, seen.append, lambda: now[0])
    assert ledger.cursor == 7 and ledger.dirty  # a node that never ran starts at the latest change
    ledger.read(8, "ca", "a1", 90.0, served=True)
    ledger.read(9, "ca", "b2", 95.0, served=True)
    ledger.read(10, "ca", "b2", 96.0, served=True)  # b2 changed again before it was signed
    ledger.read(11, "root", "c3", 97.0, served=False)  # an issuer OCSP does not answer for
    assert ledger.stated("ca", "b2") == 2 and seen == [5.0, 4.0]
    assert ledger.stated("ca", "b2") == 0 and ledger.pending() == 1  # a1: the HSM was away
    saved = ledger.saved()
    assert not ledger.dirty
    restarted = VisibilityLedger.restore(saved, lambda: 0, seen.append, lambda: now[0])
    assert restarted.cursor == 11 and restarted.pending() == 1
    now[0] = 130.0
    assert restarted.stated("ca", "a1") == 1 and seen[-1] == 40.0
    assert restarted.stated("ca", "a1") == 0 and len(seen) == 3
