"""The operator commands: revoke, release-hold, show, status; serial spellings; exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.fixture()
def loaded(private_config: Path, demo_token: Path) -> tuple[Path, list[dict]]:
    run_cli("import", "--config", str(private_config), str(demo_token / "certs"), check=True)
    manifest = json.loads((demo_token / "certs" / "manifest.json").read_text())
    return private_config, [m for m in manifest if m["issuer"] == "ac-personnes"]


@pytest.mark.parametrize("spelling", ["hex", "hex0x", "colon", "decimal"])
def test_serial_spellings(loaded: tuple[Path, list[dict]], spelling: str) -> None:
    config, manifest = loaded
    serial = int(manifest[0]["serial_hex"], 16)
    text = {"hex": f"{serial:X}", "hex0x": f"0x{serial:X}", "decimal": f"dec:{serial}",
            "colon": ":".join(f"{b:02X}" for b in serial.to_bytes((serial.bit_length() + 7) // 8, "big"))}[spelling]
    result = run_cli("show", "--config", str(config), "--issuer", "ac-personnes", "--serial", text, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["serial_hex"] == manifest[0]["serial_hex"]


def test_a_decimal_typed_by_habit_is_never_taken_for_another_serial(loaded: tuple[Path, list[dict]]) -> None:
    """An all-digit serial is hex; when its decimal reading is a certificate we hold, every
    error names it (and the dec: spelling), none suggests --force, and --force does not revoke the hex one."""
    config, manifest = loaded
    held = int(manifest[0]["serial_hex"], 16)
    typed = str(held)  # what someone reading a decimal tool's output would type
    base = ["--config", str(config), "--issuer", "ac-personnes", "--serial", typed]
    for command in (["show"], ["revoke", "--reason", "keyCompromise"], ["release-hold"],
                    ["revoke", "--reason", "keyCompromise", "--force"]):
        r = run_cli(*command, *base)
        assert r.returncode == 1, (command, r.stdout, r.stderr)
        assert f"dec:{typed}" in r.stderr and f"0x{manifest[0]['serial_hex']}" in r.stderr, r.stderr
        if "--force" not in command:
            assert "--force" not in r.stderr, r.stderr
    shown = json.loads(run_cli("show", "--config", str(config), "--issuer", "ac-personnes", "--serial",
                               f"dec:{typed}", "--json", check=True).stdout)
    assert shown["status"] == "good"  # nothing was revoked, forced or not
    r = run_cli("show", "--config", str(config), "--issuer", "ac-personnes", "--serial", f"{held:x}", "--json")
    assert r.returncode == 0
    # all digits, neither reading held: no --force hint either, the dec: spelling is named
    r = run_cli("revoke", "--config", str(config), "--issuer", "ac-personnes", "--serial", "12345",
                "--reason", "keyCompromise")
    assert r.returncode == 1 and "--force" not in r.stderr and "dec:12345" in r.stderr, r.stderr
    # unambiguous hex: --force is the way to revoke a serial never seen
    r = run_cli("revoke", "--config", str(config), "--issuer", "ac-personnes", "--serial", "0xdeadbeef",
                "--reason", "keyCompromise")
    assert r.returncode == 1 and "--force" in r.stderr, r.stderr


def test_revoke_release_and_exit_codes(loaded: tuple[Path, list[dict]]) -> None:
    config, manifest = loaded
    serial = "0x" + manifest[0]["serial_hex"]
    base = ["--config", str(config), "--issuer", "ac-personnes", "--serial", serial]
    r = run_cli("revoke", *base, "--reason", "certificateHold")
    assert r.returncode == 0 and "placed on hold" in r.stdout
    r = run_cli("revoke", *base, "--reason", "certificateHold")
    assert r.returncode == 0 and "nothing changed" in r.stdout
    r = run_cli("release-hold", *base)
    assert r.returncode == 0 and "hold released" in r.stdout
    r = run_cli("revoke", *base, "--reason", "superseded")
    assert r.returncode == 0
    r = run_cli("revoke", *base, "--reason", "affiliationChanged")
    assert r.returncode == 1 and "may only change to keyCompromise" in r.stderr
    r = run_cli("release-hold", *base)
    assert r.returncode == 1 and "revocation is final" in r.stderr
    for bogus in ("bogus", "stolen", "7", ""):  # not an RFC 5280 reason: a usage error, as documented
        r = run_cli("revoke", *base, "--reason", bogus)
        assert r.returncode == 2 and "unknown reason" in r.stderr and "keyCompromise" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    r = run_cli("revoke", "--config", str(config), "--issuer", "ac-personnes", "--serial", "0xdeadbeef",
                "--reason", "keyCompromise")
    assert r.returncode == 1 and "--force" in r.stderr
    r = run_cli("revoke", "--config", str(config), "--issuer", "ac-personnes", "--serial", "0xdeadbeef",
                "--reason", "keyCompromise", "--force", "--invalidity-date", "2026-11-01T00:00:00Z")
    assert r.returncode == 0 and "forced" in r.stdout
    r = run_cli("revoke", "--config", str(config), "--issuer", "nope", "--serial", "1", "--reason", "unspecified")
    assert r.returncode == 1 and "unknown issuer 'nope'" in r.stderr
    r = run_cli("revoke", *base)  # --reason missing
    assert r.returncode == 2
    r = run_cli("revoke", "--config", str(config), "--issuer", "ac-personnes", "--serial", "zz", "--reason", "1")
    assert r.returncode == 2 and "bad serial" in r.stderr


def test_revoke_and_release_hold_speak_json(loaded: tuple[Path, list[dict]]) -> None:
    """--json: the admin API's answer shape (changed, message, the certificate as `show --json` prints it);
    a refusal is JSON too, on stdout, with the exit code and the stderr line of the human form."""
    config, manifest = loaded
    serial = manifest[1]["serial_hex"]
    base = ["--config", str(config), "--issuer", "ac-personnes", "--serial", serial, "--json"]
    held = json.loads(run_cli("revoke", *base, "--reason", "hold", check=True).stdout)
    assert held["changed"] is True and "hold" in held["message"]
    assert held["certificate"]["status"] == "on-hold" and held["certificate"]["reason"] == "certificateHold"
    shown = json.loads(run_cli("show", *base, check=True).stdout)
    assert held["certificate"] == shown
    again = json.loads(run_cli("revoke", *base, "--reason", "certificateHold", check=True).stdout)
    assert again["changed"] is False
    released = json.loads(run_cli("release-hold", *base, check=True).stdout)
    assert released["changed"] is True and released["certificate"]["status"] == "good"
    assert json.loads(run_cli("release-hold", *base, check=True).stdout)["changed"] is False
    revoked = json.loads(run_cli("revoke", *base, "--reason", "keyCompromise", check=True).stdout)
    assert revoked["certificate"]["status"] == "revoked" and revoked["certificate"]["revocation_time"]
    r = run_cli("release-hold", *base)
    assert r.returncode == 1 and "revocation is final" in r.stderr
    assert json.loads(r.stdout) == {"ok": False, "error": "refused", "detail": r.stderr.strip().split(": ", 2)[2]}
    r = run_cli("revoke", *base[:-3], "--serial", "0xdeadbeef", "--reason", "superseded", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["error"] == "refused" and "--force" in r.stderr


def test_status_counts(loaded: tuple[Path, list[dict]], demo_token: Path) -> None:
    config, _ = loaded
    result = run_cli("status", "--config", str(config), "--json", check=True)
    counts = json.loads(result.stdout)
    manifest = json.loads((demo_token / "certs" / "manifest.json").read_text())
    total = sum(sum(v.values()) for v in counts.values())
    assert total == len(manifest)
    assert set(counts) == {"ac-racine", "ac-personnes", "ac-structures"}
    human = run_cli("status", "--config", str(config), check=True).stdout
    assert "ac-personnes" in human and "revoked" in human
    assert "\033[" not in human  # no colour when not on a terminal
    # the page's data: no CRL built yet here, so the health summary says so, per CRL
    data = json.loads(run_cli("status", "--config", str(config), "--json", "--all", check=True).stdout)
    assert [i["name"] for i in data["issuers"]] == ["ac-racine", "ac-personnes", "ac-structures"]
    assert {i["name"]: i["counts"] for i in data["issuers"]} == counts
    assert not data["health"]["ok"]
    assert {"part": "crl", "text": "ac-personnes.crl: not published yet"} in data["health"]["problems"]
    assert "not published" in human and "health: " in human


def test_serial_parser_rules() -> None:
    from directory import serials

    for text in ("1001", "0x1001", "0X1001", "10:01", "1001".lower(), "dec:4097", "DEC:4097", "0:10:01"):
        assert serials.parse(text) == 0x1001, text
    assert serials.parse("0x1A2b") == 0x1A2B
    assert serials.parse("1a:2B") == 0x1A2B
    assert serials.parse("6699") == 0x6699  # digits only: still hex, as openssl prints it
    assert serials.parse("dec:6699") == 6699
    assert serials.parse("0" * 70 + "1") == 1  # leading zeros, bounded text
    bad = ["", "0x", "1::2", "12g", "-5", "123\n", "123 ", " 123", "\u00b2", "\u0663", "１２", "0x1A:2B", "dec:",
           "dec:12a", "dec:-1", "1:", ":1", "123:4", "0x" + "1" * 5000, "9" * 5000, "dec:" + "9" * 5000]
    for text in bad:
        with pytest.raises(serials.SerialError):
            serials.parse(text)
    with pytest.raises(serials.SerialError, match="longer than 20 octets"):
        serials.parse("0x" + "ff" * 21)
    assert serials.colon_hex(0x1A2B) == "1A:2B"
    assert serials.decimal_reading("4096") == 4096 and serials.decimal_reading("0x10") is None
    assert serials.decimal_reading("5") is None  # the same number either way: nothing else it could mean
    # the miss explained alike by the CLI and the admin API, each with its own way to ask
    held = {"1000"}.__contains__  # 4096 = 0x1000
    assert serials.explain_unknown("ac", "4096", "4096", held, "send").endswith(
        "; it does hold 0x1000, which is decimal 4096: if you meant that one, send dec:4096")
    assert serials.explain_unknown("ac", "12345", "12345", held, "write --serial").endswith(
        "; if 12345 was meant as decimal, write --serial dec:12345")
    assert serials.explain_unknown("ac", "0x10", "10", held, "send") == (
        "issuer ac has no certificate with serial 0x10 (serials are hex)")


def test_every_refusal_is_one_family() -> None:
    """One base for every refusal: the CLI prints any of them as refused (exit 1), the API answers 409/422."""
    from directory.admin.api import ApiError
    from directory.hsm.errors import PinRefused
    from directory.ingest.importer import CertificateRefused
    from directory.refusal import Refused
    from directory.revocation import RevocationRefused

    for family in (CertificateRefused, RevocationRefused, PinRefused, ApiError):
        assert issubclass(family, Refused), family
    assert ApiError(409, "conflict", "x").conflict and not ApiError(422, "refused", "x").conflict
