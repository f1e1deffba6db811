"""``annuaire check publication [--all] [--json]``: one pass of the publication checker, from the shell.

Exit codes: 0 every channel agrees with the registry, 1 a disagreement (or a channel that did not
answer), each listed with issuer, serial, channel, expected and seen; 2 usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from directory.wording import plural

if TYPE_CHECKING:
    from directory.config import Config


def run(config: Config, args: argparse.Namespace) -> int:
    from directory.check.checker import PublicationChecker
    from directory.config import ConfigError
    from directory.runtime import open_config_registry

    if args.url is not None and not args.url.startswith(("http://", "https://")):
        raise ConfigError(config.path, "--url", "must be an http:// or https:// URL")
    registry = open_config_registry(config)
    try:
        checker = PublicationChecker(config, registry, url=args.url)
        outcome = checker.run_once(everything=args.all, sample=args.sample)
    finally:
        registry.close()
    findings, troubles = outcome.findings, outcome.troubles
    if args.json:
        print(json.dumps({"ok": not findings and not troubles, "certificates": outcome.certificates,
                          "url": checker.http.base_url, "mismatches": [f.as_dict() for f in findings],
                          "errors": [{"channel": t.channel, "issuer": t.issuer, "error": t.text} for t in troubles]},
                         indent=1, ensure_ascii=False))
    else:
        for f in findings:
            serial = f"0x{f.serial_hex}" if f.serial_hex else "-"
            print(f"mismatch {f.channel:4} {f.issuer} {serial}: expected {f.expected}, seen {f.seen} ({f.where})")
        for t in troubles:
            print(f"error    {t.channel:4} {t.issuer}: {t.text}", file=sys.stderr)
        verdict = "agree" if not findings and not troubles else (
            f"{plural(len(findings), 'mismatch')}, {plural(len(troubles), 'channel')} not answering")
        print(f"publication check of {plural(outcome.certificates, 'certificate')} against {checker.http.base_url}: "
              f"{verdict}")
    return 1 if findings or troubles else 0


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,  # type: ignore[type-arg]
               func: object) -> None:
    check = sub.add_parser("check", help="compare what the public channels say with the registry")
    commands = check.add_subparsers(dest="check_command", required=True)
    p = commands.add_parser("publication", parents=[common],
                            help="OCSP, CRLs and the directory, as a relying party sees them (exit 1: mismatch)")
    p.add_argument("--all", action="store_true", help="every certificate (default: recent changes and a sample)")
    p.add_argument("--sample", type=_positive, default=200, metavar="N",
                   help="certificates in the sample (default 200)")
    p.add_argument("--url", help="the service's public URL (default: [check] url, else this node's listener)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=func)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)
