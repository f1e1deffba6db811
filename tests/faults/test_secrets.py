"""Secrets never reach a log or an error message; files are private to the service's user."""

from __future__ import annotations

import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.admin_client import call
from tests.conftest import run_cli
from tests.served import http, serve


def _secrets(demo_dir: Path) -> dict[str, str]:
    return {"hsm pin": (demo_dir / "hsm" / "pin").read_text().strip(),
            "ldap password": (demo_dir / "secrets" / "ldap-password").read_text().strip(),
            "admin token": (demo_dir / "secrets" / "admin-token").read_text().strip()}


def _assert_clean(text: str, secrets: dict[str, str], where: str) -> None:
    for name, value in secrets.items():
        assert value not in text, f"the {name} appears in {where}"


def test_secrets_stay_out_of_logs_and_errors(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANNUAIRE_LOG_LEVEL", "DEBUG")
    demo_dir = demo.parent
    secrets = _secrets(demo_dir)
    # a full run at debug level, with good and bad credentials thrown at it
    with serve(demo) as served:
        for token in (secrets["admin token"], "wrong-" + secrets["admin token"][:8], ""):
            call(served.admin, "GET", "/api/v1/certificates/ac-personnes/0x01", token=token)
        http(served.base + "/metrics")
        http(served.base + "/")
        time.sleep(1)
    _assert_clean(served.output, secrets, "the service log")

    # a wrong PIN: refused with a reason, the PIN (wrong or right) nowhere
    (demo_dir / "hsm" / "pin").write_text("99999999\n")
    result = run_cli("--log-level", "DEBUG", "crl", "build", "-c", str(demo))
    assert result.returncode != 0 and re.search(r"(?i)pin", result.stderr), result.stderr
    _assert_clean(result.stdout + result.stderr, {**secrets, "wrong pin": "99999999"}, "the CLI's output")
    (demo_dir / "hsm" / "pin").write_text(secrets["hsm pin"] + "\n")

    # a wrong LDAP password: the directory refuses, the sync says so, the password is not in the message
    with serve(demo) as served:
        (demo_dir / "secrets" / "ldap-password").write_text("not-the-password-123\n")
        result = run_cli("--log-level", "DEBUG", "ldap", "sync", "--full", "-c", str(demo))
        (demo_dir / "secrets" / "ldap-password").write_text(secrets["ldap password"] + "\n")
    assert result.returncode == 1 and "directory" in result.stderr, result.stderr
    _assert_clean(result.stdout + result.stderr, {**secrets, "wrong password": "not-the-password-123"},
                  "the sync's output")
    _assert_clean(served.output, secrets, "the service log")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_private_to_the_service_user(demo: Path) -> None:
    demo_dir = demo.parent
    run_cli("crl", "build", "-c", str(demo), check=True)
    data = demo_dir / "data"
    assert _mode(data) == 0o700
    for path in [data / "registry.sqlite3", *sorted((data / "crl").glob("*.crl"))]:
        assert _mode(path) & 0o077 == 0, (path, oct(_mode(path)))
    assert _mode(data / "crl") & 0o077 == 0
    for directory in (demo_dir / "hsm", demo_dir / "secrets"):
        assert _mode(directory) == 0o700, directory
        for path in directory.iterdir():
            if path.is_file():
                assert _mode(path) & 0o077 == 0, (path, oct(_mode(path)))
    # a fresh demo is private from the start
    fresh = demo_dir.parent / "fresh"
    subprocess.run([*_cli(), "init-demo", str(fresh), "--certs", "2"], check=True, capture_output=True)
    assert _mode(fresh / "data" / "registry.sqlite3") & 0o077 == 0
    assert _mode(fresh / "secrets" / "admin-token") == 0o600


def _cli() -> list[str]:
    from tests.conftest import ANNUAIRE

    return list(ANNUAIRE)
