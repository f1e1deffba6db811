"""The annuaire command line. Exit codes: 0 done, 1 refused (with a message), 2 usage or configuration."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from directory.cli import crl
from directory.cli.common import EXIT_REFUSED, EXIT_USAGE, searched
from directory.refusal import Refused

if TYPE_CHECKING:
    from directory.crl.readahead import ReadAhead

DESCRIPTION = ("The annuaire command line: publication of a CA's certificates and revocations\n"
               "(CRLs, OCSP, LDAP), signed in an HSM.")
EPILOG = ("configuration: --config FILE, else $ANNUAIRE_CONFIG, else the first that exists of\n"
          f"  {searched()}\n"
          "exit codes: 0 done, 1 refused (the reason is printed), 2 usage or configuration error")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Version(argparse.Action):
    """``--version``: ours, Python's, OpenSSL's and the key libraries' (read only when asked)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from directory.version import version_text

        print(version_text())
        parser.exit()


def log_level(text: str) -> str:
    """argparse type: one of Python's level names, any case (``--log-level`` or ``$ANNUAIRE_LOG_LEVEL``)."""
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level (one of {', '.join(LOG_LEVELS)})")
    return text.upper()


def build_parser(crl_only: bool = False) -> argparse.ArgumentParser:
    """Every command, each group's from its own module (in the order ``--help`` lists them); ``crl_only``:
    the crl group's alone (``main``, for words that can only be `crl build`: the other groups' modules are not
    imported nor their parsers made)."""
    parser = argparse.ArgumentParser(prog="annuaire", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, help="show the version (and those of Python and the key "
                                                            "libraries) and exit")
    parser.add_argument("--log-level", type=log_level, default=os.environ.get("ANNUAIRE_LOG_LEVEL", "INFO"),
                        help=f"one of {', '.join(LOG_LEVELS)} (default: $ANNUAIRE_LOG_LEVEL, else INFO)")
    parser.add_argument("--log-format", choices=["json", "human"], default=os.environ.get("ANNUAIRE_LOG_FORMAT"),
                        help="json lines, or human lines (default: human on a terminal, json otherwise)")
    common = argparse.ArgumentParser(add_help=False)
    config_help = f"configuration file (default: $ANNUAIRE_CONFIG, else {searched()})"
    parser.add_argument("--config", "-c", help=config_help)
    common.add_argument("--config", "-c", help=config_help, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    if crl_only:
        crl.add_parsers(sub, common)
        return parser
    from directory.cli import audit, certificates, demo, ldap, service  # (not before `crl build`'s read began)

    for group in (demo.add_parsers, certificates.add_parsers, service.add_parsers, crl.add_parsers,
                  ldap.add_parsers, audit.add_parsers, service.add_check_parsers):
        group(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Everything this program creates (registry, CRL files, directory data, secrets, demo files) is
    # readable by its own user only; whatever must be public is served over HTTP/LDAP by the service.
    os.umask(0o077)
    # At exit the interpreter's collections would walk every object of every module loaded (a tenth of a
    # second after `crl build` on a busy machine), only to free memory the system takes back anyway.
    atexit.unregister(gc.freeze)  # once per process, however many times main() runs in it (tests)
    atexit.register(gc.freeze)
    # Words that can only be `crl build` (``crl.plain_build``): its first CRL's entries are read from here on,
    # told where by the words alone, while the parsers are made and the command imports what it needs
    # (not when $ANNUAIRE_LOG_LEVEL, --log-level's default, is one the parser refuses: the full parser's error)
    level = os.environ.get("ANNUAIRE_LOG_LEVEL", "INFO")
    plain = crl.plain_build(sys.argv[1:] if argv is None else argv) if level.upper() in LOG_LEVELS else None
    ahead = crl.read_ahead(plain) if plain is not None else None
    try:
        with crl.quiet() if ahead is not None else contextlib.nullcontext():
            return _run(argv, plain is not None, ahead)
    finally:
        if ahead is not None:
            ahead.close()  # unless a build took it (then closed already)


def _run(argv: list[str] | None, crl_only: bool, ahead: ReadAhead | None) -> int:
    """The command parsed and run (``ahead``: `crl build`'s read, begun by ``main``, handed to it)."""
    parser = build_parser(crl_only)
    args = parser.parse_args(argv)
    from directory import logs

    logs.setup(args.log_level, args.log_format)
    if args.func is crl.cmd_crl_build:
        args.read_ahead = ahead
    try:
        return int(args.func(args))
    except Exception as exc:
        code = _expected(args, exc)
        if code is None:
            raise
        return code


def _expected(args: argparse.Namespace, exc: Exception) -> int | None:
    """The exit code of a failure a command may meet (said why), None for any other (a bug: its traceback).
    Their classes are imported only then: not on a command's start-up (`crl build` reads meanwhile)."""
    from directory.config import ConfigError
    from directory.hsm.errors import HsmError  # (not .signer: python-pkcs11 only once the HSM is opened)
    from directory.registry import NotRegistered, RegistryError

    if isinstance(exc, ConfigError):
        return _failed(args, EXIT_USAGE, "configuration", f"configuration error: {exc}", str(exc))
    if isinstance(exc, (HsmError, RegistryError, NotRegistered)):  # PinRefused included: named as the HSM's answer
        return _failed(args, EXIT_REFUSED, type(exc).__name__, f"{type(exc).__name__}: {exc}", str(exc))
    if isinstance(exc, Refused):
        return _failed(args, EXIT_REFUSED, "refused", f"refused: {exc}", str(exc))
    return None


def _failed(args: argparse.Namespace, code: int, kind: str, message: str, detail: str) -> int:
    """Say why on stderr; a command asked for ``--json`` also gets its failure as JSON on stdout."""
    print(f"annuaire: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": kind, "detail": detail}, indent=1, ensure_ascii=False))
    return code
