"""deploy/, checked on this machine (no Docker engine here): the compose topology is consistent, the
example configurations load with the real loader, the systemd units pass `systemd-analyze verify`, the
container's slapd configuration renders and passes `slaptest` for both roles."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from directory.cli import build_parser
from directory.config import load_config
from tests.conftest import ROOT
from tests.test_ldap_sync import _tls_files

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose"


def test_compose_topology_is_consistent() -> None:
    doc = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    services: dict[str, Any] = doc["services"]
    assert set(services) == {"postgres", "ldap-provider-1", "ldap-provider-2", "ldap-consumer-1", "ldap-consumer-2",
                             "annuaire-1", "annuaire-2", "balancer"}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build:
            context = (COMPOSE / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        depends = service.get("depends_on", {})
        for target in (depends if isinstance(depends, list) else depends.keys()):
            assert target in services, (name, target)
            condition = depends[target].get("condition") if isinstance(depends, dict) else None
            if condition == "service_healthy":
                assert "healthcheck" in services[target], (name, target)
        for secret in service.get("secrets", []):
            assert secret in doc["secrets"], (name, secret)
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (COMPOSE / source).exists(), (name, source)
            elif not source.startswith(("/", "../", "$")):
                assert source in doc["volumes"], (name, source)
        for network in service.get("networks", []):
            assert network in doc["networks"], (name, network)
    # every secret is a file under ./secrets/ (not in git) and never a value in the file itself
    for secret in doc["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    for name, service in services.items():
        for key in (service.get("environment") or {}):
            assert "PASSWORD" not in key.upper() or key.endswith("_FILE"), (name, key)
    # the balancer sends traffic to the service nodes and the consumers, checking /readyz
    haproxy = (COMPOSE / "haproxy.cfg").read_text()
    for node in ("annuaire-1", "annuaire-2", "ldap-consumer-1", "ldap-consumer-2"):
        assert re.search(rf"^\s*server {node} {node}:\d+ check", haproxy, re.M), node
    assert "option httpchk GET /readyz" in haproxy
    # the two service nodes share one registry and list both providers
    node_config = tomllib.loads((COMPOSE / "annuaire.toml").read_text())
    assert node_config["registry"]["url"].startswith("postgresql://")
    assert node_config["ldap"]["urls"] == ["ldap://ldap-provider-1", "ldap://ldap-provider-2"]


def _materialise(config: Path, tmp_path: Path, demo: Path) -> Path:
    """Copy ``config`` with every absolute path moved under ``tmp_path``, the files created there (the
    demo's CA certificates for certificate paths, placeholders otherwise), so the real loader checks it."""
    text = config.read_text()
    for path in sorted(set(re.findall(r'"(/[^"]+)"', text))):
        target = tmp_path / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        name = Path(path).name
        if name.endswith(".pem") and (demo / "ca" / name).exists():
            shutil.copy(demo / "ca" / name, target)
        elif path.endswith((".so", ".pem", ".key")) or "secrets" in path:
            target.write_text("placeholder\n")
        else:
            target.mkdir(parents=True, exist_ok=True)
        text = text.replace(f'"{path}"', f'"{target}"')
    out = tmp_path / config.name
    out.write_text(text)
    return out


def _credentials(config: Path) -> set[str]:
    return set(re.findall(r'"credential:([^"]+)"', config.read_text()))


@pytest.mark.parametrize("config", [DEPLOY / "annuaire.production.toml", COMPOSE / "annuaire.toml"],
                         ids=["production", "compose"])
def test_example_configurations_load(config: Path, tmp_path: Path, demo_token: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "credentials"  # what systemd's LoadCredential= fills
    credentials.mkdir()
    for name in _credentials(config):
        (credentials / name).write_text("placeholder\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    loaded = load_config(_materialise(config, tmp_path, demo_token))
    assert loaded.registry_url.startswith("postgresql://") and loaded.registry_password_file is not None
    assert loaded.ldap is not None and len(loaded.ldap.urls) == 2
    assert loaded.admin is not None
    assert "password" not in loaded.registry_url  # the password is read from its file at connection time
    if config.name == "annuaire.production.toml":  # the root stays offline: no key of it on a service host
        assert loaded.issuer("ac-racine").offline


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is part of systemd")
@pytest.mark.parametrize("unit", ["annuaire.service", "annuaire-slapd.service"])
def test_systemd_units_verify(unit: str, tmp_path: Path) -> None:
    text = (DEPLOY / "systemd" / unit).read_text().replace("/opt/annuaire/.venv", str(ROOT / ".venv"))
    (tmp_path / unit).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr  # a bad key is only a warning
    assert "User=annuaire" in text or "-u openldap" in text  # never root
    for line in text.splitlines():  # the service's command lines are ones our CLI accepts
        if line.startswith(("ExecStart=", "ExecStartPre=")) and "annuaire " in line:
            args = line.split("=", 1)[1].split()[1:]
            build_parser().parse_args(args)


def test_service_unit_notifies_and_hands_over_every_secret() -> None:
    unit = (DEPLOY / "systemd" / "annuaire.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if re.match(r"^[A-Z]\w+=", line)
                    and not line.startswith("LoadCredential="))
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"  # READY=1/WATCHDOG=1 from serve
    assert settings["WatchdogSec"] == "30s"
    assert settings["KillMode"] == "mixed"  # SIGTERM to serve alone: it stops its LDAP worker itself
    loaded = dict(re.findall(r"^LoadCredential=([^:]+):(/etc/annuaire/secrets/\S+)$", unit, re.M))
    assert _credentials(DEPLOY / "annuaire.production.toml") == set(loaded)
    production = (DEPLOY / "annuaire.production.toml").read_text()
    assert "/etc/annuaire/secrets/" not in re.sub(r"(?m)#.*$", "", production)  # no secret read directly


@pytest.mark.parametrize("role", ["provider", "consumer"])
def test_container_slapd_configuration_renders_and_passes_slaptest(role: str, tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "ldap-replicator-password").write_text("replicator-pw\n")
    (tmp_path / "secrets" / "ldap-password").write_text("service-pw\n")
    for name, made in zip(("ldap-ca", "ldap-tls-certificate", "ldap-tls-key"), _tls_files(tmp_path), strict=True):
        made.rename(tmp_path / "secrets" / name)
    env = {"ROLE": role, "SELF_URL": "ldap://127.0.0.1:3999/", "ANNUAIRE_DIR": str(ROOT),
           "RUN_DIR": str(tmp_path / "run"), "DATA_DIR": str(tmp_path / "data"),
           "SECRETS_DIR": str(tmp_path / "secrets"), "CHECK_ONLY": "1", "PATH": "/usr/sbin:/usr/bin:/bin"}
    result = subprocess.run(["sh", str(COMPOSE / "slapd-entry.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    conf = (tmp_path / "run" / "slapd.conf").read_text()
    assert "@" not in re.sub(r"(?m)^#.*$", "", conf).replace("@SUFFIX", "")  # every placeholder filled
    assert ("multiprovider   on" in conf) == (role == "provider")
    assert ("updateref" in conf) == (role == "consumer")
    assert "replicator-pw" in conf and oct((tmp_path / "run" / "slapd.conf").stat().st_mode & 0o777) == "0o600"
    assert re.search(r"^rootpw\s+\{ARGON2\}\$argon2", conf, re.M)  # only a hash of the (random) root password
    body = re.sub(r"(?m)^#.*$", "", conf)
    assert body.count("starttls=critical") == 2 and body.count('binddn="cn=replicator,o=sante,c=fr"') == 2
    # a provider's first start seeds the suffix and the two accounts, passwords as {ARGON2} hashes
    seeded = subprocess.run(["slapcat", "-f", str(tmp_path / "run" / "slapd.conf"), "-o", "ldif-wrap=no"],
                            capture_output=True, text=True)
    dns = re.findall(r"^dn: (.*)$", seeded.stdout, re.M)
    if role == "provider":
        assert dns == ["o=sante,c=fr", "cn=annuaire,o=sante,c=fr", "cn=replicator,o=sante,c=fr"], seeded.stderr
        hashes = [base64.b64decode(v) for v in re.findall(r"^userPassword:: (\S+)$", seeded.stdout, re.M)]
        assert len(hashes) == 2 and all(h.startswith(b"{ARGON2}$argon2") for h in hashes)
        assert "service-pw" not in seeded.stdout and "replicator-pw" not in seeded.stdout
    else:
        assert dns == []  # a consumer gets everything by replication


def _packages(target: str) -> set[str]:
    """The Debian packages ``make TARGET`` would install when missing (from make's dry run)."""
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, check=True).stdout
    return {p for found in re.findall(r"for p in ([^;]*);", dry) for p in found.split()}


def test_production_deps_leave_out_softhsm_and_the_test_tools() -> None:
    runtime = _packages("deps")
    assert runtime == {"slapd", "ldap-utils", "opensc", "openssl"}
    assert {"softhsm2"} <= _packages("run")  # the demo signs with SoftHSM2
    assert {"softhsm2", "gnutls-bin", "chromium", "chromium-driver"} <= _packages("test")
    assert {"softhsm2", "wrk"} <= _packages("bench")
    assert not {"softhsm2", "wrk", "chromium"} & runtime


def test_the_service_image_installs_the_wheel_and_the_locked_dependencies() -> None:
    """annuaire.Dockerfile (no Docker engine here: read statically): a wheel built from the tree, installed
    with the hash-checked runtime lock, never the source tree itself; everything it copies exists, and the
    package's links to schema/ and deploy/slapd/ resolve inside what the build stage copies."""
    text = (COMPOSE / "annuaire.Dockerfile").read_text()
    assert "pip install --no-cache-dir --require-hashes --no-deps -r requirements/build.txt" in text
    assert "pip wheel --no-deps --no-build-isolation -w /wheels ." in text
    assert "pip install --no-cache-dir --require-hashes --no-deps -r /tmp/runtime.txt" in text
    assert "pip install --no-cache-dir --no-deps /tmp/wheels/annuaire-*.whl" in text and "pip check" in text
    assert not re.search(r"pip install[^\n]* \.\s", text)
    copied = []
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _ = line.split()
        copied += sources
    for source in copied:
        assert (ROOT / source).exists(), source
    for link in (ROOT / "directory" / "ldap" / "shipped").iterdir():
        target = link.resolve().relative_to(ROOT)
        assert link.is_symlink() and any(target.is_relative_to(c) for c in copied), (link, target)
