"""A second, genuinely different PKCS#11 module for the tests: tpm2-pkcs11 over a software TPM.

    swtpm (TPM 2.0 simulator, state in a temp folder)
      ← tpm2-abrmd (access broker and resource manager, on a private D-Bus of its own)
        ← tpm2-pkcs11 in every process that opens the token (pytest, `annuaire serve`, the CLI)

Why tpm2-abrmd rather than the swtpm TCTI straight from the module: swtpm serves one connection at a
time (a second process, the served service beside the test, would wait for the first to exit) and a TPM
holds three transient objects: without a resource manager they leak from one client to the next until
the TPM answers "out of memory for object contexts". The broker gives each connection its own view.
Its D-Bus is private (a socket in the temp folder), so nothing touches the machine's buses, and it
works as root (``--allow-root``) as in CI.

Everything lives under one temp folder and stops at the end of the session; start-up takes about a second.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import run_cli

MODULE_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
    "/usr/lib/x86_64-linux-gnu/libtpm2_pkcs11.so.1",
    "/usr/lib/aarch64-linux-gnu/libtpm2_pkcs11.so.1",
)
TOOLS = {"swtpm": "swtpm", "tpm2-abrmd": "tpm2-abrmd", "dbus-daemon": "dbus", "tpm2_ptool": "libtpm2-pkcs11-tools",
         "tpm2_getrandom": "tpm2-tools"}
TABRMD_TCTI_LIBS = ("/usr/lib/x86_64-linux-gnu/libtss2-tcti-tabrmd.so.0",
                    "/usr/lib/aarch64-linux-gnu/libtss2-tcti-tabrmd.so.0")
TOKEN_LABEL = "annuaire-tpm2"


def find_module() -> str | None:
    return next((p for p in MODULE_CANDIDATES if os.path.exists(p)), None)


def missing_packages() -> list[str]:
    """Debian packages this fixture needs that are not installed (``make test`` installs them)."""
    missing = [package for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if find_module() is None:
        missing.append("libtpm2-pkcs11-1")
    if not any(os.path.exists(p) for p in TABRMD_TCTI_LIBS):
        missing.append("libtss2-tcti-tabrmd0")
    return missing


def _two_free_ports() -> int:
    """A port P with P + 1 free too (swtpm's command and control channels)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two consecutive free ports")


@dataclass
class Tpm2Token:
    """What a config needs: module, token label, PIN file; ``env`` is what each process using it needs."""

    module: str
    label: str
    pin_file: Path
    env: dict[str, str]

    def pin(self) -> str:
        return self.pin_file.read_text().strip()


@dataclass
class Tpm2Simulator:
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub in ("tpm", "store"):
            (self.root / sub).mkdir(exist_ok=True)
        port = _two_free_ports()
        self._spawn("swtpm", ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.root / 'tpm'}",
                              "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                              "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                              "--flags", "not-need-init,startup-clear"])
        bus = self.root / "bus"
        self._spawn("dbus", ["dbus-daemon", "--session", "--nofork", "--nopidfile", f"--address=unix:path={bus}"])
        self._wait(bus.exists, "the private D-Bus socket")
        tcti = "tabrmd:bus_type=session"
        self.env = {"DBUS_SESSION_BUS_ADDRESS": f"unix:path={bus}", "TPM2TOOLS_TCTI": tcti,
                    "TPM2_PKCS11_TCTI": tcti, "TPM2_PKCS11_STORE": str(self.root / "store")}
        abrmd = ["tpm2-abrmd", "--session", "--flush-all", f"--tcti=swtpm:host=127.0.0.1,port={port}"]
        if os.geteuid() == 0:
            abrmd.append("--allow-root")  # CI runs as root; the broker refuses root without it
        self._spawn("abrmd", abrmd)
        self._wait(lambda: self._run(["tpm2_getrandom", "--hex", "4"], check=False).returncode == 0, "tpm2-abrmd")
        self._run(["tpm2_ptool", "init", f"--path={self.root / 'store'}"])

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 (kept open for the process's life)
        self._procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **self.env}, start_new_session=True))

    def _wait(self, ready: object, what: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not ready():  # type: ignore[operator]
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}) while waiting for {what}: "
                                       f"see {self.root}/*.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout} s (see {self.root}/*.log)")
            time.sleep(0.05)

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(argv, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=120,
                                check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{argv[0]} {argv[1]} failed: {result.stderr[-1500:]}")
        return result

    def add_token(self, label: str) -> Tpm2Token:
        """An initialised token with a random user PIN in ``root/LABEL.pin`` (0600)."""
        module = find_module()
        assert module is not None
        pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
        self._run(["tpm2_ptool", "addtoken", "--pid=1", f"--label={label}", f"--userpin={pin}", f"--sopin={so_pin}",
                   f"--path={self.root / 'store'}"])
        pin_file = self.root / f"{label}.pin"
        fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(pin + "\n")
        return Tpm2Token(module, label, pin_file, dict(self.env))

    def add_key(self, token: Tpm2Token, algorithm: str, key_label: str) -> None:
        """A key made by the token's own tool (``rsa2048``, ``ecc256``, ``ecc384``...)."""
        self._run(["tpm2_ptool", "addkey", f"--label={token.label}", f"--key-label={key_label}",
                   f"--algorithm={algorithm}", f"--userpin={token.pin()}", f"--path={self.root / 'store'}"])

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()


@pytest.fixture(scope="session")
def tpm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tpm2Simulator]:
    """The simulator, with its environment exported to this process (tpm2-pkcs11 reads it when loaded)."""
    missing = missing_packages()
    if missing:
        pytest.fail(f"tpm2-pkcs11 test token needs the Debian packages {' '.join(missing)} (make test installs them)")
    simulator = Tpm2Simulator(tmp_path_factory.mktemp("tpm2"))
    saved = {k: os.environ.get(k) for k in ("DBUS_SESSION_BUS_ADDRESS", "TPM2TOOLS_TCTI", "TPM2_PKCS11_TCTI",
                                            "TPM2_PKCS11_STORE")}
    try:
        simulator.start()
        os.environ.update(simulator.env)
        yield simulator
    finally:
        simulator.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def tpm2_token(tpm2: Tpm2Simulator) -> Tpm2Token:
    return tpm2.add_token(TOKEN_LABEL)


@pytest.fixture(scope="session")
def tpm2_demo(tpm2_token: Tpm2Token, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`annuaire init-demo` on the tpm2 token (RSA CAs, 20 end entities); never modified."""
    directory = tmp_path_factory.mktemp("tpm2demo") / "demo"
    run_cli("init-demo", str(directory), "--certs", "20", "--pkcs11-module", tpm2_token.module,
            "--token-label", tpm2_token.label, "--pin-file", str(tpm2_token.pin_file), env=tpm2_token.env,
            check=True)
    return directory
