"""Certificate commands: ``import``, ``revoke``, ``release-hold``, ``show``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from directory import serials
from directory.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    canonical_serial,
    checked_serial,
    config_of,
    registry_for,
    time_arg,
    unknown_serial,
    user,
)
from directory.cli.progress import ProgressBar
from directory.inputs import format_time
from directory.refusal import Refused
from directory.revocation import REASON_CODES, RevocationRefused, parse_reason


def cmd_import(args: argparse.Namespace) -> int:
    from directory.runtime import importer_for, open_config_registry

    config = config_of(args)
    registry = open_config_registry(config)
    importer = importer_for(config, registry, actor=f"cli:{user()}", apply_older=args.apply_older)
    bar = ProgressBar("importing")
    summary = importer.import_paths([Path(p) for p in args.paths], Path(args.certs_dir) if args.certs_dir else None,
                                    progress=bar)
    bar.finish()
    if args.json:
        print(json.dumps(summary.as_dict(), indent=1))
    else:
        for source, reason in summary.refused:
            print(f"refused: {source}: {reason}", file=sys.stderr)
        for difference in summary.differences:
            print(f"differs: {difference.source}: {difference.text()}", file=sys.stderr)
        print(f"imported {summary.imported}, already present {summary.present}, refused {len(summary.refused)}"
              + (f", revocations applied {summary.revoked}" if summary.revoked else "")
              + (f", newer in the registry {len(summary.differences)}" if summary.differences else ""))
    return EXIT_OK if summary.ok else EXIT_REFUSED


def cmd_revoke(args: argparse.Namespace) -> int:
    from directory.registry import UnknownCertificate

    registry = registry_for(args, "revocation")
    serial_hex = canonical_serial(args.serial_text)
    other = serials.decimal_reading(args.serial_text)
    if args.force and other is not None and registry.get(args.issuer, serial_hex) is None \
            and registry.get(args.issuer, serials.to_hex(other)) is not None:
        # forcing 0x1001 when the registry holds 0x3e9 (= 1001): almost surely a decimal typed by habit
        raise Refused(unknown_serial(registry, args.issuer, args.serial_text, serial_hex, False)
                      + f"; to force the hex serial anyway, write --serial 0x{serial_hex}")
    try:
        outcome = registry.revoke(args.issuer, serial_hex, args.reason, at=args.at,
                                  invalidity_date=args.invalidity_date, actor=f"cli:{user()}", force=args.force)
    except UnknownCertificate:
        raise Refused(unknown_serial(registry, args.issuer, args.serial_text, serial_hex, True)) from None
    return _changed(args, serial_hex, outcome)


def cmd_release_hold(args: argparse.Namespace) -> int:
    from directory.registry import UnknownCertificate

    registry = registry_for(args, "releasing a hold")
    serial_hex = canonical_serial(args.serial_text)
    try:
        outcome = registry.release_hold(args.issuer, serial_hex, actor=f"cli:{user()}")
    except UnknownCertificate:
        raise Refused(unknown_serial(registry, args.issuer, args.serial_text, serial_hex, False)) from None
    return _changed(args, serial_hex, outcome)


def _changed(args: argparse.Namespace, serial_hex: str, outcome: Any) -> int:
    """What a revoke or release did: a line, or with ``--json`` the admin API's answer shape (``changed``,
    ``message``, ``certificate`` as ``show --json`` prints it)."""
    if args.json:
        print(json.dumps({"changed": outcome.changed, "message": outcome.message,
                          "certificate": _record(outcome.record)}, indent=1, ensure_ascii=False))
    else:
        print(f"{args.issuer} 0x{serial_hex}: {outcome.message}" + ("" if outcome.changed else " (nothing changed)"))
    return EXIT_OK


def _record(record: Any) -> dict[str, Any]:
    data: dict[str, Any] = record.as_dict()
    for key in ("not_before", "not_after", "revocation_time", "invalidity_date"):
        data[key] = format_time(data[key])
    data["serial_colon"] = serials.colon_hex(int(record.serial_hex, 16))
    return data


def reason_arg(text: str) -> str:
    """argparse type: an RFC 5280 reason name, any casing, or its code; anything else is a usage error."""
    try:
        return parse_reason(text)
    except RevocationRefused as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_show(args: argparse.Namespace) -> int:
    registry = registry_for(args)
    serial_hex = canonical_serial(args.serial_text)
    record = registry.get(args.issuer, serial_hex)
    if record is None:
        raise Refused(unknown_serial(registry, args.issuer, args.serial_text, serial_hex, False))
    data = _record(record)
    if args.json:
        print(json.dumps(data, indent=1, ensure_ascii=False))
    else:
        for key, value in data.items():
            if value not in (None, [], ""):
                print(f"{key:16} {', '.join(value) if isinstance(value, list) else value}")
    return EXIT_OK


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The parsers of import, revoke, release-hold and show."""
    p = sub.add_parser("import", parents=[common], help="import certificates (PEM, DER, folders, index.txt)")
    p.add_argument("paths", nargs="+")
    p.add_argument("--certs-dir", help="where an index.txt's certificates are (default: newcerts/, certs/)")
    p.add_argument("--apply-older", action="store_true",
                   help="apply an index.txt's state even where the registry changed the certificate after it "
                        "(default: the registry keeps its newer state and the difference is reported)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import)

    def target(p: argparse.ArgumentParser) -> None:
        p.add_argument("--issuer", required=True)
        p.add_argument("--serial", required=True, type=checked_serial, dest="serial_text",
                       help="hex as openssl prints it (1A2B, 0x1A2B, 1A:2B); decimal only as dec:6699")

    p = sub.add_parser("revoke", parents=[common], help="revoke a certificate")
    target(p)
    p.add_argument("--reason", required=True, type=reason_arg,
                   help=f"RFC 5280 reason, any casing, or its code: {', '.join(REASON_CODES)}")
    p.add_argument("--invalidity-date", type=time_arg)
    p.add_argument("--at", type=time_arg, help="revocation time (default: now)")
    p.add_argument("--force", action="store_true", help="revoke a serial the registry has never seen")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("release-hold", parents=[common], help="release a certificateHold")
    target(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_release_hold)

    p = sub.add_parser("show", parents=[common], help="show one certificate's registry entry")
    target(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
