"""What every command shares: exit codes, the configuration, argument types, registry access, the actor."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from directory import serials
from directory.inputs import InputError, parse_time
from directory.refusal import Refused

if TYPE_CHECKING:  # the configuration (and cryptography's x509 with it) once a command reads it: `crl build`
    # reads its entries meanwhile
    from directory.config import Config

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


# Where the configuration is looked for when neither --config nor $ANNUAIRE_CONFIG names it, in this order
CONFIG_SEARCH = (Path("annuaire.toml"), Path("/etc/annuaire/annuaire.toml"))


def searched() -> str:
    """``CONFIG_SEARCH`` for messages: ``./annuaire.toml, /etc/annuaire/annuaire.toml``."""
    return ", ".join(str(p) if p.is_absolute() else f"./{p}" for p in CONFIG_SEARCH)


def config_path(args: argparse.Namespace) -> Path | None:
    """The configuration file a command uses: ``--config``, else ``$ANNUAIRE_CONFIG``, else the first of
    ``CONFIG_SEARCH`` that exists; None when none is given and none exists."""
    named = getattr(args, "config", None) or os.environ.get("ANNUAIRE_CONFIG")
    if named:
        return Path(named)
    return next((path for path in CONFIG_SEARCH if path.exists()), None)


def config_of(args: argparse.Namespace) -> Config:
    from directory.config import ConfigError, load_config

    path = config_path(args)
    if path is None:
        raise ConfigError(CONFIG_SEARCH[0], "-", f"file not found (looked for {searched()}); "
                          "give --config FILE or set $ANNUAIRE_CONFIG")
    return load_config(path)


def time_arg(text: str) -> int:
    """RFC 3339 (``2026-11-28T10:00:00Z``, offsets allowed; no offset means UTC) to epoch seconds."""
    try:
        return parse_time(text, assume_utc=True)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def canonical_serial(text: str) -> str:
    try:
        return serials.canonical(text)
    except serials.SerialError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def checked_serial(text: str) -> str:
    """argparse type: the text as given once it reads as a serial (commands need the text itself to tell
    a hex serial from a decimal typed by habit)."""
    canonical_serial(text)
    return text


def unknown_serial(registry: Any, issuer: str, text: str, serial: str, force_hint: bool) -> str:
    """Why nothing matched ``--serial text``; suggests --force only when the input cannot have meant
    another serial (an all-digit one could be a decimal number typed without ``dec:``)."""
    message = serials.explain_unknown(issuer, text, serial, lambda other: registry.get(issuer, other) is not None,
                                      "write --serial")
    if serials.decimal_reading(text) is not None:
        return message
    return message + ("; use --force to revoke a serial the registry has never seen" if force_hint else "")


def registry_for(args: argparse.Namespace, change: str | None = None):  # type: ignore[no-untyped-def]
    """The configured registry, once ``--issuer`` names a configured issuer (one whose key is here when the
    command makes a status ``change``: an offline issuer's revocations are made at its key ceremony)."""
    from directory.crl.publish import refuse_if_offline
    from directory.runtime import open_config_registry

    config = config_of(args)
    if args.issuer not in {i.name for i in config.issuers}:
        raise Refused(f"unknown issuer {args.issuer!r} (configured: {', '.join(i.name for i in config.issuers)})")
    if change is not None:
        refuse_if_offline(config.issuer(args.issuer), change)
    return open_config_registry(config)


def read_registry(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The configured registry, opened for reading only (no issuer bookkeeping, no audit record)."""
    from directory.registry import open_registry

    return open_registry(config_of(args).registry_location())


def user() -> str:
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.getuid())


@contextlib.contextmanager
def output_file(path: str | None, text: bool = False) -> Iterator[IO[Any]]:
    """Where a command writes its output: standard output (no ``path``, or ``-``), or a temporary file beside
    ``path`` renamed over it once complete (a failed or interrupted command leaves the previous file, never half
    of one). A ``path`` that exists and is not a regular file (``/dev/null``, a named pipe into ``slapadd``, a
    terminal) is written to as it is: renaming over it would put a private regular file in the place of a
    device the whole host relies on.

    Standard output, as bytes, is written by a thread (``pipeout``) and, once complete, pointed at
    ``/dev/null`` so a reader (slapadd) sees its end at once: whatever the command prints afterwards goes to
    standard error (``ldap export`` does), or nowhere."""
    import tempfile  # here: only the commands writing a file need them, not `crl build`'s start-up

    from directory.cli.pipeout import written_behind

    mode = "w" if text else "wb"
    if not path or path == "-":
        if text:
            yield sys.stdout
            return
        sys.stdout.flush()
        with written_behind(sys.stdout.fileno()) as handle:  # a pipe to slapadd: each at its own pace
            yield handle
        null = os.open(os.devnull, os.O_WRONLY)  # complete: the reader sees the end now, not at our exit
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
        return
    target = os.path.abspath(path)
    try:
        special = not stat.S_ISREG(os.stat(target).st_mode)
    except FileNotFoundError:
        special = False
    if special and not text:  # a named pipe into slapadd, a device
        fd = os.open(target, os.O_WRONLY)
        try:
            with written_behind(fd) as stream:
                yield stream
        finally:
            os.close(fd)
        return
    if special:
        with open(target, mode, buffering=1 << 20, encoding="utf-8") as stream:
            yield stream
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=os.path.dirname(target))
    try:
        with os.fdopen(fd, mode, buffering=1 << 20, encoding="utf-8" if text else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
