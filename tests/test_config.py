"""Configuration errors name the file, the key and the problem, and nothing is touched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from directory.config import ConfigError, load_config
from tests.conftest import run_cli


def _edit(config: Path, old: str, new: str) -> Path:
    text = config.read_text()
    assert old in text, old
    config.write_text(text.replace(old, new, 1))
    return config


def test_private_config_loads(private_config: Path) -> None:
    config = load_config(private_config)
    assert config.demo is True
    assert [i.name for i in config.issuers] == ["ac-racine", "ac-personnes", "ac-structures"]
    assert config.registry_url.startswith("sqlite:////")
    assert config.http.port == 18080 and config.ldap is not None and config.ldap.managed


@pytest.mark.parametrize("old,new,key,problem", [
    ('token_label = "annuaire-demo"', 'token_label = "annuaire-demo"\npin = "1234"', "hsm.pin", "unknown key"),
    ('pin_file = ', 'pin_env = "ANNUAIRE_TEST_UNSET_PIN"\npin_file = ', "hsm.pin_env", "exactly one of"),
    ('listen = "127.0.0.1:18080"', 'listen = "nowhere"', "http.listen", "must be HOST:PORT"),
    ('max_concurrent = 2', 'max_concurrent = "two"', "hsm.max_concurrent", "must be int"),
    ('name = "ac-personnes"', 'name = "AC Personnes"', "issuers[1].name", "lower-case"),
    ('ca/ac-structures.pem"', 'ca/missing.pem"', "issuers[ac-structures].certificate", "cannot read"),
    ('module = "', 'module = "/nonexistent/libpkcs11.so"\n#', "hsm.module", "does not exist"),
    ("managed = true", 'managed = true\nperson_dn = "cn={CN},uid={UID}"', "ldap.person_dn", "intermediate entry"),
    ("managed = true", 'managed = true\nstructure_dn = ["cn=fixed"]', "ldap.structure_dn", "type={SUBJECT_ATTRIBUTE}"),
    ("managed = true", 'managed = true\nreconcile_interval = "often"', "ldap.reconcile_interval", "not a duration"),
    ('suffix = "o=sante,c=fr"', 'suffix = "not a dn"', "ldap.suffix", "not a DN"),
    ('listen = "127.0.0.1:18080"', 'listen = "127.0.0.1:18080"\nrequest_timeout = 0', "http.request_timeout",
     "between 1 and 3600"),
    ('listen = "127.0.0.1:18080"', 'listen = "127.0.0.1:18080"\nworkers = 0', "http.workers", "between 1 and 256"),
    ('listen = "127.0.0.1:18080"', 'listen = "127.0.0.1:18080"\nworkers = "auto"', "http.workers", "must be int"),
    ('token_file = ', 'max_connections = 0\ntoken_file = ', "admin.max_connections", "between 1 and 100000"),
    ('token_file = ', 'request_timeout = true\ntoken_file = ', "admin.request_timeout", "between 1 and 3600"),
    ('token_file = ', 'idle_timeout = "1m"\ntoken_file = ', "admin.idle_timeout", "must be int or float"),
])
def test_errors_name_file_key_and_problem(private_config: Path, old: str, new: str, key: str,
                                          problem: str) -> None:
    _edit(private_config, old, new)
    with pytest.raises(ConfigError) as info:
        load_config(private_config)
    assert info.value.file == str(private_config)
    assert info.value.key == key
    assert problem in info.value.problem


def test_listener_limits_are_read(private_config: Path) -> None:
    config = load_config(private_config)
    assert config.http.workers == len(os.sched_getaffinity(0))  # default: every core this process may use
    _edit(private_config, 'listen = "127.0.0.1:18080"', 'listen = "127.0.0.1:18080"\nworkers = 1')
    assert load_config(private_config).http.workers == 1
    config = load_config(private_config)
    assert config.admin is not None and config.http.request_timeout == 10.0
    assert (config.admin.max_connections, config.admin.request_timeout) == (64, 60.0)
    _edit(private_config, "token_file = ", "max_connections = 5\nidle_timeout = 2\nrequest_timeout = 7.5\n"
                                           "token_file = ")
    admin = load_config(private_config).admin
    assert admin is not None and (admin.max_connections, admin.idle_timeout, admin.request_timeout) == (5, 2.0, 7.5)


def test_pin_env_must_be_set(private_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = private_config.read_text()
    lines = [line for line in text.splitlines() if not line.startswith("pin_file")]
    private_config.write_text("\n".join(lines).replace("[hsm]", '[hsm]\npin_env = "ANNUAIRE_TEST_PIN"'))
    monkeypatch.delenv("ANNUAIRE_TEST_PIN", raising=False)
    with pytest.raises(ConfigError, match="ANNUAIRE_TEST_PIN is not set"):
        load_config(private_config)
    monkeypatch.setenv("ANNUAIRE_TEST_PIN", "secret")
    assert load_config(private_config).hsm.read_pin() == "secret"


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("demo = [")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "none.toml")


def test_cli_exits_2_before_touching_anything(private_config: Path) -> None:
    _edit(private_config, 'listen = "127.0.0.1:18080"', 'listen = "nowhere"')
    for args in (["status"], ["serve"], ["import", "/dev/null"]):
        result = run_cli(*args, "--config", str(private_config))
        assert result.returncode == 2, result.stderr
        assert f"{private_config}: http.listen: must be HOST:PORT" in result.stderr
    assert not (private_config.parent / "data").exists()


def test_secrets_from_systemd_credentials(private_config: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``credential:NAME`` is NAME in $CREDENTIALS_DIRECTORY (LoadCredential=); nothing else changes."""
    text = private_config.read_text()
    secrets = {}
    for key, name in (("pin_file", "hsm-pin"), ("password_file", "ldap-password"), ("token_file", "admin-token")):
        old = next(line for line in text.splitlines() if line.startswith(f"{key} = "))
        secrets[name] = Path(old.split('"')[1]).read_text()
        text = text.replace(old, f'{key} = "credential:{name}"')
    private_config.write_text(text)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(private_config)
    assert info.value.key == "hsm.pin_file" and "credential:hsm-pin needs $CREDENTIALS_DIRECTORY" in str(info.value)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name, value in secrets.items():
        (credentials / name).write_text(value)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = load_config(private_config)
    assert config.hsm.pin_file == credentials / "hsm-pin"
    assert config.hsm.read_pin() == secrets["hsm-pin"].strip()
    assert config.ldap is not None and config.ldap.read_password() == secrets["ldap-password"].strip()
    assert config.admin is not None and config.admin.read_token() == secrets["admin-token"].strip()
    (credentials / "admin-token").write_text("")
    with pytest.raises(ConfigError, match=r"admin\.token_file: .* is empty"):
        load_config(private_config)
    for bad in ("../hsm-pin", "", "a/b", ".."):
        _edit(private_config, 'pin_file = "credential:', f'pin_file = "credential:{bad}" #')
        with pytest.raises(ConfigError, match="a credential name is one file name") as info:
            load_config(private_config)
        assert info.value.key == "hsm.pin_file"
        private_config.write_text(text)
