"""Shared fixtures: a demo CA built by the real CLI (SoftHSM2 token included) and a private slapd."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ANNUAIRE = [sys.executable, "-m", "directory.cli"]

pytest_plugins = ["tests.slapd", "tests.ldap_env", "tests.pg", "tests.tpm2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, check: bool = False, env: dict[str, str] | None = None, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*ANNUAIRE, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                            env={**os.environ, **(env or {})}, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"annuaire {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def clone_demo(source: Path, target: Path) -> Path:
    """Copy a demo (token files included) and point its SoftHSM2 config at the copy."""
    shutil.copytree(source, target)
    conf = target / "hsm" / "softhsm2.conf"
    conf.write_text(conf.read_text().replace(str(source / "hsm"), str(target / "hsm")))
    return target / "annuaire.toml"


@pytest.fixture(scope="session")
def demo_pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo built once by `annuaire init-demo` (RSA, 60 end entities). Never modified: clone it."""
    directory = tmp_path_factory.mktemp("demo") / "demo"
    run_cli("init-demo", str(directory), "--certs", "60", "--http-port", "18080", "--ldap-port", "13890",
            check=True)
    return directory


@pytest.fixture(scope="session")
def demo_token(demo_pristine: Path) -> Path:
    """Point this process's SoftHSM2 at the pristine demo's token (one token for all in-process tests)."""
    os.environ["SOFTHSM2_CONF"] = str(demo_pristine / "hsm" / "softhsm2.conf")
    return demo_pristine


@pytest.fixture()
def demo(tmp_path: Path, demo_pristine: Path) -> Path:
    """A private copy of the demo this test may change; returns its annuaire.toml."""
    return clone_demo(demo_pristine, tmp_path / "demo")


@pytest.fixture()
def private_config(tmp_path: Path, demo_token: Path) -> Path:
    """A config using the pristine demo's CA files and token, with an empty registry of its own."""
    source = (demo_token / "annuaire.toml").read_text()
    text = source.replace('data_dir = "data"', f'data_dir = "{tmp_path / "data"}"')
    for rel in ("hsm/pin", "hsm/softhsm2.conf", "secrets/ldap-password", "secrets/admin-token"):
        text = text.replace(f'"{rel}"', f'"{demo_token / rel}"')
    text = text.replace('certificate = "ca/', f'certificate = "{demo_token}/ca/')
    text = text.replace('file = "pc/', f'file = "{demo_token}/pc/')  # the CAs' certification policy documents
    path = tmp_path / "annuaire.toml"
    path.write_text(text)
    return path


class Clock:
    """A clock the test moves by hand (``clock.now += seconds``), for code that takes ``clock=``."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else float(start)

    def __call__(self) -> float:
        return self.now


@dataclass
class SigningResponder:
    config: Any
    clock: Clock
    responder: Any  # ocsp.responder.OcspResponder
    cert: Any  # the demo's delegated OCSP responder certificate, the one certificate the registry holds


@pytest.fixture()
def signing_responder(private_config: Path) -> Iterator[SigningResponder]:
    """An ``OcspResponder`` of the demo's token over a private registry holding one certificate of ac-personnes
    (its delegated responder's), on a ``Clock`` the test moves; HSM and registry closed afterwards."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from directory.config import load_config
    from directory.ingest.importer import Importer
    from directory.runtime import known_issuers, open_config_registry, open_hsm
    from ocsp.responder import OcspResponder

    config = load_config(private_config)
    clock = Clock()
    registry = open_config_registry(config)
    cert = config.issuer("ac-personnes").ocsp.signer_certificate
    Importer(registry, known_issuers(config)).import_der(cert.public_bytes(Encoding.DER))
    hsm = open_hsm(config)
    try:
        yield SigningResponder(config, clock, OcspResponder(config, hsm, registry, clock), cert)
    finally:
        hsm.close()
        registry.close()
