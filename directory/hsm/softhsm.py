"""A private SoftHSM2 token under a directory of our own (demo and tests only).

SoftHSM2 reads its configuration from ``SOFTHSM2_CONF`` when the module is initialised, so each
demo directory carries its own ``softhsm2.conf`` and token folder and never touches the system one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


class SoftHsmError(RuntimeError):
    """SoftHSM2 is missing or refused to create the token."""


def find_module() -> str:
    """Path of the SoftHSM2 PKCS#11 module installed by the Debian package."""
    for candidate in DEFAULT_MODULE_CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    raise SoftHsmError("libsofthsm2.so not found: install the softhsm2 package (make run does)")


@dataclass(frozen=True)
class SoftHsmToken:
    """What a caller needs to use the token: module, conf file, label and where the PIN file is."""

    module: str
    conf: Path
    label: str
    pin_file: Path

    def pin(self) -> str:
        return self.pin_file.read_text().strip()


def create_token(root: Path, label: str, pin: str | None = None) -> SoftHsmToken:
    """Create ``root/softhsm2.conf``, ``root/tokens/`` and an initialised token ``label``.

    The PIN is random unless given; it is written to ``root/pin`` (0600) and never printed.
    Calling it again on the same directory returns the existing token.
    """
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    tokens = root / "tokens"
    tokens.mkdir(exist_ok=True, mode=0o700)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
        "slots.removable = false\n"
    )
    pin_file = root / "pin"
    module = find_module()
    token = SoftHsmToken(module, conf, label, pin_file)
    if pin_file.exists() and any(tokens.iterdir()):
        return token
    util = shutil.which("softhsm2-util")
    if util is None:
        raise SoftHsmError("softhsm2-util not found: install the softhsm2 package (make run does)")
    pin = pin or secrets.token_hex(8)
    so_pin = secrets.token_hex(8)
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(pin + "\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    result = subprocess.run(
        [util, "--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", pin],
        env=env, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        # softhsm2-util does not echo PINs; its message is safe to show.
        raise SoftHsmError(f"softhsm2-util --init-token failed: {result.stderr.strip() or result.stdout.strip()}")
    return token
