"""Service commands: ``status``, ``serve``, ``check-config``, ``check publication``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from directory.cli.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, config_of
from directory.config import Config, ConfigError
from directory.wording import plural


def cmd_status(args: argparse.Namespace) -> int:
    """What the publication page shows. ``--json``: {issuer: counts} (a stable contract); ``--json --all``:
    the page's whole data (``health.ok`` for monitoring scripts)."""
    from directory.ops.overview import overview
    from directory.ops.terminal import print_overview
    from directory.runtime import open_config_registry

    config = config_of(args)
    registry = open_config_registry(config)
    try:
        if args.json and not args.all:
            print(json.dumps(registry.counts(), indent=1))
            return EXIT_OK
        data = overview(config, registry, time.time())
    finally:
        registry.close()
    if args.json:
        print(json.dumps(data, indent=1, ensure_ascii=False))
    else:
        print_overview(data)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from directory.admin.api import AdminComponent
    from directory.check.component import CheckComponent
    from directory.crl.service import CrlComponent
    from directory.ldap.component import LdapSyncComponent
    from directory.ldap.managed import ManagedLdapComponent
    from directory.ops.page import PageComponent
    from directory.service.app import serve
    from ocsp.http import OcspComponent

    return serve(config_of(args), [ManagedLdapComponent(), CrlComponent(), OcspComponent(), LdapSyncComponent(),
                                   PageComponent(), AdminComponent(), CheckComponent()])


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = config_of(args)
    except ConfigError as exc:
        if not args.json:
            raise
        print(f"annuaire: configuration error: {exc}", file=sys.stderr)
        print(json.dumps({"config": exc.file, "ok": False, "error": "configuration", "key": exc.key,
                          "problem": exc.problem, "detail": str(exc)}, indent=1, ensure_ascii=False))
        return EXIT_USAGE
    hsm_report, hsm_problem = None, None
    if not args.offline:
        hsm_report, hsm_problem = _hsm_report(config)
    unusable = hsm_report.unusable if hsm_report is not None else []
    if args.json:
        print(json.dumps({"config": str(config.path), "ok": not unusable, "issuers": [i.name for i in config.issuers],
                          "ldap": config.ldap is not None, "admin": config.admin is not None,
                          "hsm": hsm_report.as_dict() if hsm_report is not None else None,
                          "hsm_problem": hsm_problem}, indent=1))
    else:
        print(f"{config.path}: {'REFUSED' if unusable else 'OK'} ({plural(len(config.issuers), 'issuer')})")
        for line in hsm_report.lines() if hsm_report is not None else []:
            print(f"  {line}")
    if hsm_problem:
        print(f"annuaire: HSM not checked: {hsm_problem}", file=sys.stderr)
    if unusable:
        print("annuaire: the HSM cannot sign as configured: " + "; ".join(unusable), file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def _hsm_report(config: Config) -> tuple[Any, str | None]:
    """What the module and token offer for the configured keys (a read-only session, one test signature per
    key); a token that cannot be reached is said, not an error (the service starts without it too)."""
    from directory.hsm.signer import HsmUnavailable
    from directory.runtime import inspect_hsm, open_hsm

    try:
        hsm = open_hsm(config)
    except HsmUnavailable as exc:
        return None, str(exc)
    try:
        return inspect_hsm(config, hsm), None
    except HsmUnavailable as exc:
        return None, str(exc)
    finally:
        hsm.close()


def cmd_check_publication(args: argparse.Namespace) -> int:
    from directory.check.command import run

    return run(config_of(args), args)


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The parsers of status and serve."""
    p = sub.add_parser("status", parents=[common],
                       help="what the publication page shows: health, CAs, CRLs, OCSP, directory")
    p.add_argument("--json", action="store_true", help="counts by issuer and status (with --all: everything)")
    p.add_argument("--all", action="store_true", help="with --json: the page's whole data")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("serve", parents=[common], help="run the service")
    p.set_defaults(func=cmd_serve)


def add_check_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The parsers of check publication and check-config (listed last)."""
    from directory.check.command import add_parser as add_check_parser

    add_check_parser(sub, common, cmd_check_publication)

    p = sub.add_parser("check-config", parents=[common],
                       help="validate the configuration and what the HSM offers for its keys, and exit")
    p.add_argument("--json", action="store_true")
    p.add_argument("--offline", action="store_true", help="do not open the HSM")
    p.set_defaults(func=cmd_check_config)
