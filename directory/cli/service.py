"""Service commands: ``status``, ``serve``, ``check publication`` (and ``check-config``'s parser, from
``check_config``)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from directory.cli import check_config
from directory.cli.common import EXIT_OK, config_of


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

    check_config.add_parser(sub, common)
