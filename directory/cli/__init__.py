"""The ``annuaire`` command line. Exit codes: 0 done, 1 refused (with a message), 2 usage or configuration."""

from __future__ import annotations

import argparse
import os
import sys

from directory.cli import audit, certificates, crl, demo, ldap, service
from directory.cli.common import EXIT_REFUSED, EXIT_USAGE
from directory.config import ConfigError
from directory.refusal import Refused


def build_parser() -> argparse.ArgumentParser:
    """Every command, each group's from its own module (in the order ``--help`` lists them)."""
    parser = argparse.ArgumentParser(prog="annuaire", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("ANNUAIRE_LOG_LEVEL", "INFO"))
    parser.add_argument("--log-format", choices=["json", "human"], default=os.environ.get("ANNUAIRE_LOG_FORMAT"),
                        help="json lines, or human lines (default: human on a terminal, json otherwise)")
    common = argparse.ArgumentParser(add_help=False)
    config_help = "configuration file (default: $ANNUAIRE_CONFIG or ./annuaire.toml)"
    parser.add_argument("--config", "-c", help=config_help)
    common.add_argument("--config", "-c", help=config_help, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (demo.add_parsers, certificates.add_parsers, service.add_parsers, crl.add_parsers,
                  ldap.add_parsers, audit.add_parsers, service.add_check_parsers):
        group(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Everything this program creates (registry, CRL files, directory data, secrets, demo files) is
    # readable by its own user only; whatever must be public is served over HTTP/LDAP by the service.
    os.umask(0o077)
    parser = build_parser()
    args = parser.parse_args(argv)
    from directory import logs

    logs.setup(args.log_level, args.log_format)
    from directory.hsm.signer import HsmError
    from directory.registry import NotRegistered, RegistryError

    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"annuaire: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (HsmError, RegistryError, NotRegistered) as exc:  # PinRefused included: named as the HSM's answer
        print(f"annuaire: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except Refused as exc:
        print(f"annuaire: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
