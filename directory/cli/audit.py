"""Audit trail commands: ``audit verify`` (the hash chain) and ``audit export`` (JSON lines)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from directory.cli.common import EXIT_OK, EXIT_REFUSED, output_file, read_registry
from directory.refusal import Refused
from directory.wording import plural


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from directory.registry.audit import read_lines, verify_chain

    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                report = verify_chain(read_lines(f), args.head)
        except (OSError, ValueError, KeyError) as exc:
            raise Refused(f"cannot read the export {args.file}: {exc}") from None
    else:
        registry = read_registry(args)
        try:
            report = verify_chain(registry.iter_audit(), args.head)
        finally:
            registry.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        for p in report.problems:
            where = f"record {p['id']}" if p["id"] is not None else "chain"
            print(f"{where}: {p['problem']}: {p['detail']}")
        verdict = "intact" if report.ok else f"BROKEN ({plural(len(report.problems), 'problem')})"
        print(f"audit chain {verdict}: {plural(report.records, 'record')}, head {report.head_id} {report.head}")
    return EXIT_OK if report.ok else EXIT_REFUSED


def cmd_audit_export(args: argparse.Namespace) -> int:
    from directory.registry.audit import export_lines

    registry = read_registry(args)
    try:
        with output_file(args.output, text=True) as out:
            n = export_lines(registry.iter_audit(args.after), out)
        if args.output and args.output != "-":
            print(f"{n} audit records written to {args.output}", file=sys.stderr)
    finally:
        registry.close()
    return EXIT_OK


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The parsers of audit verify and audit export."""
    audit = sub.add_parser("audit", help="the hash-chained audit trail").add_subparsers(dest="audit_command",
                                                                                       required=True)
    p = audit.add_parser("verify", parents=[common], help="check the chain; exit 1 names each edited or missing record")
    p.add_argument("--head", help="a head hash noted earlier: also catches records removed from the end")
    p.add_argument("--file", help="verify an export (JSON lines) instead of the registry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit_verify)
    p = audit.add_parser("export", parents=[common], help="write the audit records as JSON lines")
    p.add_argument("--output", "-o", help="file to write (atomically; default: standard output)")
    p.add_argument("--after", type=int, default=0, metavar="ID", help="only records after this id")
    p.set_defaults(func=cmd_audit_export)
