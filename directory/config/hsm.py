"""``[hsm]``: the PKCS#11 module, token and PIN source (never inline), concurrent signatures."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from directory.config.reader import Section


@dataclass(frozen=True)
class HsmConfig:
    module: str
    token_label: str
    pin_env: str | None
    pin_file: Path | None
    max_concurrent: int
    softhsm2_conf: Path | None
    serialize: bool = False  # one call at a time into the module (a module known not to take concurrent calls)

    @property
    def pin_source(self) -> str:
        """Where the PIN comes from, as messages say it (never the PIN)."""
        return f"environment variable {self.pin_env}" if self.pin_env else f"file {self.pin_file}"

    def read_pin(self) -> str:
        """The PIN, read when needed (not kept in the config object)."""
        if self.pin_env:
            return os.environ[self.pin_env]
        assert self.pin_file is not None
        return self.pin_file.read_text().strip()


def hsm_section(s: Section) -> HsmConfig:
    module = s.get("module", str, required=True)
    if not os.path.exists(module):
        raise s.error("module", f"PKCS#11 module {module} does not exist")
    pin_env = s.get("pin_env", str, None)
    pin_file = s.path("pin_file", None)
    if (pin_env is None) == (pin_file is None):
        raise s.error("pin_env", "exactly one of pin_env or pin_file must be set (the PIN is never inline)")
    if pin_env is not None and not os.environ.get(pin_env):
        raise s.error("pin_env", f"environment variable {pin_env} is not set or empty")
    if pin_file is not None:
        try:
            if not pin_file.read_text().strip():
                raise s.error("pin_file", f"{pin_file} is empty")
        except OSError as exc:
            raise s.error("pin_file", f"cannot read {pin_file}: {exc.strerror}") from None
    max_concurrent = s.get("max_concurrent", int, 2)
    if not 1 <= max_concurrent <= 256:
        raise s.error("max_concurrent", "must be between 1 and 256")
    conf = s.path("softhsm2_conf", None)
    if conf is not None and not conf.exists():
        raise s.error("softhsm2_conf", f"{conf} does not exist")
    return HsmConfig(module, s.get("token_label", str, required=True), pin_env, pin_file, max_concurrent, conf,
                     s.get("serialize", bool, False))
