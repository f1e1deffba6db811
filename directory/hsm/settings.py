"""What the signer is told (module, token, where the PIN comes from) and what it counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HsmSettings:
    """Where the token is and how to log in. ``pin`` comes from an env var or a file, never from config."""

    module: str
    token_label: str
    pin: str = field(repr=False)
    max_concurrent: int = 2
    softhsm2_conf: str | None = None
    # where the PIN comes from (file or environment), read again after a refusal: a PIN changed on the
    # token and in its file is picked up without a restart, and a refused PIN is never tried twice
    pin_reader: Callable[[], str] | None = field(default=None, repr=False, compare=False)
    serialize: bool = False  # one call at a time into the module (for modules known not to take concurrent calls)
    # said in messages about a refused PIN: "file /etc/annuaire/hsm-pin", "environment variable X"
    pin_source: str = "the PIN file or variable"
    # False for an environment variable: a running process never sees it change (a restart is needed)
    pin_rereadable: bool = True


@dataclass
class HsmStats:
    """Counters exported as metrics."""

    signatures: int = 0
    errors: int = 0
    relogins: int = 0
    reinits: int = 0
