"""Command-line conventions: usage errors exit 2 without a traceback, --json answers in JSON even when the
configuration cannot be loaded, where the configuration is looked for, help text without markup, plurals,
and a PostgreSQL registry without its driver named as such."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from directory.cli import common
from directory.config import ConfigError
from directory.wording import plural
from tests.conftest import ROOT, run_cli


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_an_unknown_log_level_is_a_usage_error(how: str) -> None:
    args, env = (["--log-level", "foo"], {}) if how == "flag" else ([], {"ANNUAIRE_LOG_LEVEL": "foo"})
    r = run_cli(*args, "check-config", "--offline", "--config", "/nonexistent.toml", env=env)
    assert r.returncode == 2 and "'foo' is not a log level" in r.stderr and "WARNING" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("--log-level", "debug", "check-config", "--offline", "--config", "/nonexistent.toml")
    assert r.returncode == 2 and "file not found" in r.stderr  # any casing is a level; the config is next


def test_check_config_json_when_loading_fails(tmp_path: Path, private_config: Path) -> None:
    broken = tmp_path / "broken.toml"
    for text, key, problem in (
            (None, "-", "file not found"),
            ("[hsm\n", "-", "invalid TOML"),
            (private_config.read_text().replace("[http]\n", "[http]\nbogus = 1\n"), "http.bogus", "unknown key")):
        if text is None:
            broken.unlink(missing_ok=True)
        else:
            broken.write_text(text)
        r = run_cli("check-config", "--offline", "--json", "--config", str(broken))
        assert r.returncode == 2, r.stderr
        answer = json.loads(r.stdout)
        assert answer["ok"] is False and answer["error"] == "configuration" and answer["key"] == key, answer
        assert problem in answer["problem"] and answer["config"] == str(broken), answer
        assert "configuration error" in r.stderr
    r = run_cli("check-config", "--offline", "--json", "--config", str(private_config))
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True


def test_where_the_configuration_is_looked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config, then $ANNUAIRE_CONFIG, then ./annuaire.toml, then /etc/annuaire/annuaire.toml."""
    assert (Path("annuaire.toml"), Path("/etc/annuaire/annuaire.toml")) == common.CONFIG_SEARCH
    system = tmp_path / "etc" / "annuaire.toml"  # the system path, moved under tmp_path for the test
    monkeypatch.setattr(common, "CONFIG_SEARCH", (Path("annuaire.toml"), system))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANNUAIRE_CONFIG", raising=False)
    args = argparse.Namespace(config=None)
    assert common.config_path(args) is None
    looked = r"file not found \(looked for ./annuaire.toml, .*/etc/annuaire.toml\); give --config"
    with pytest.raises(ConfigError, match=looked):
        common.config_of(args)
    system.parent.mkdir()
    system.write_text("")
    assert common.config_path(args) == system
    (tmp_path / "annuaire.toml").write_text("")
    assert common.config_path(args) == Path("annuaire.toml")
    monkeypatch.setenv("ANNUAIRE_CONFIG", "/from/env.toml")
    assert common.config_path(args) == Path("/from/env.toml")
    assert common.config_path(argparse.Namespace(config="given.toml")) == Path("given.toml")


def test_help_is_plain_text_and_names_the_conventions() -> None:
    out = run_cli("--help", check=True).stdout
    assert "``" not in out and ":func:" not in out
    assert "./annuaire.toml, /etc/annuaire/annuaire.toml" in out and "exit codes: 0 done, 1 refused" in out
    for command in (["revoke"], ["release-hold"], ["check-config"], ["crl", "build"], ["ldap", "sync"]):
        sub = run_cli(*command, "--help", check=True).stdout
        assert "``" not in sub, command
    assert "--json" in run_cli("revoke", "--help", check=True).stdout
    assert "--json" in run_cli("release-hold", "--help", check=True).stdout


def test_plurals() -> None:
    assert [plural(n, "issuer") for n in (0, 1, 2)] == ["0 issuers", "1 issuer", "2 issuers"]
    assert [plural(n, "entry") for n in (0, 1, 2)] == ["0 entries", "1 entry", "2 entries"]
    assert plural(1, "mismatch") == "1 mismatch" and plural(3, "mismatch") == "3 mismatches"
    assert plural(2, "key") == "2 keys" and plural(2, "byte") == "2 bytes"


def test_check_config_counts_issuers_in_words(tmp_path: Path, private_config: Path) -> None:
    text = private_config.read_text()
    head, first, *_ = text.split("[[issuers]]")
    one = tmp_path / "one.toml"
    one.write_text(head + "[[issuers]]" + first)
    r = run_cli("check-config", "--offline", "--config", str(one), check=True)
    assert r.stdout.rstrip().endswith(": OK (1 issuer)"), r.stdout
    r = run_cli("check-config", "--offline", "--config", str(private_config), check=True)
    assert r.stdout.rstrip().endswith(": OK (3 issuers)"), r.stdout


def test_a_postgresql_registry_without_its_driver_is_named(tmp_path: Path, private_config: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg is the postgresql extra: without it, a postgresql:// registry is a configuration error that
    says how to install it (not an ImportError at the first query)."""
    config = tmp_path / "pg.toml"
    config.write_text(private_config.read_text().replace(
        "[http]", '[registry]\nurl = "postgresql://annuaire@127.0.0.1:5432/test"\n\n[http]', 1))
    hide = ("import sys; sys.modules['psycopg'] = None; from directory.cli import main; "
            f"sys.exit(main(['check-config', '--offline', '--config', {str(config)!r}]))")
    r = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "registry.url: a postgresql:// registry needs the PostgreSQL driver" in r.stderr
    assert "pip install 'annuaire[postgresql]'" in r.stderr and "Traceback" not in r.stderr
    from directory.registry.backends import BackendError, PostgresBackend

    monkeypatch.setitem(sys.modules, "psycopg", None)  # what an install without the extra looks like
    with pytest.raises(BackendError, match=r"annuaire\[postgresql\]"):
        PostgresBackend("postgresql://annuaire@127.0.0.1:5432/test")
    monkeypatch.undo()
    # with the extra installed (as here), the same file loads
    assert run_cli("check-config", "--offline", "--config", str(config)).returncode == 0


def test_a_configuration_nested_too_deeply_is_a_configuration_error(tmp_path: Path) -> None:
    """tomllib recurses once per nesting level: a file of thousands of levels is refused as invalid TOML (exit 2,
    the file named), by every command, `crl build`'s early read included, never with a traceback."""
    deep = tmp_path / "deep.toml"
    deep.write_text("demo = " + "[" * 5000 + "]" * 5000 + "\n")
    for args in (["check-config", "--offline"], ["crl", "build"], ["status"]):
        r = run_cli(*args, "--config", str(deep))
        assert r.returncode == 2 and "nested too deeply" in r.stderr and str(deep) in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
