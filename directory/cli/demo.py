"""``annuaire init-demo``: a demo CA hierarchy, its token and configuration (demo and tests only)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from directory.cli.common import EXIT_OK
from directory.refusal import Refused


def cmd_init_demo(args: argparse.Namespace) -> int:
    from directory.demo.init import DemoError, DemoOptions, DemoToken, init_demo

    token = None
    given = [args.pkcs11_module, args.token_label, args.pin_file]
    if any(given):
        if not all(given):
            raise Refused("--pkcs11-module, --token-label and --pin-file go together")
        token = DemoToken(args.pkcs11_module, args.token_label, Path(args.pin_file))
    try:
        path = init_demo(DemoOptions(Path(args.directory), args.certs, args.key_type, args.http_port,
                                     args.ldap_port, args.crl_partitions, args.admin_port, token),
                         say=lambda m: print(m, file=sys.stderr))
    except DemoError as exc:
        raise Refused(str(exc)) from None
    print(path)
    return EXIT_OK


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The parsers of init-demo."""
    p = sub.add_parser("init-demo", help="build a demo CA hierarchy and config under DIR (demo/tests only)")
    p.add_argument("directory")
    p.add_argument("--certs", type=int, default=200)
    p.add_argument("--key-type", choices=["rsa", "ec"], default="rsa")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--ldap-port", type=int, default=3890)
    p.add_argument("--admin-port", type=int, default=8443)
    p.add_argument("--crl-partitions", type=int, default=0, metavar="N",
                   help="partition the issuing CAs' CRLs in N (certificates carry the matching CDP)")
    p.add_argument("--pkcs11-module", metavar="PATH",
                   help="build on this module's existing, empty token instead of a private SoftHSM2 token "
                        "(with --token-label and --pin-file)")
    p.add_argument("--token-label", metavar="LABEL")
    p.add_argument("--pin-file", metavar="FILE", help="the token's user PIN (the config points at this file)")
    p.set_defaults(func=cmd_init_demo)
