"""The ``annuaire`` command line. Exit codes: 0 done, 1 refused (with a message), 2 usage or configuration."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from directory import serials
from directory.config import Config, ConfigError, load_config
from directory.inputs import format_time
from directory.refusal import Refused

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def _config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("ANNUAIRE_CONFIG") or "annuaire.toml"
    return load_config(path)


def _time(text: str) -> int:
    """RFC 3339 (``2026-11-28T10:00:00Z``, offsets allowed; no offset means UTC) to epoch seconds."""
    from directory.inputs import InputError, parse_time

    try:
        return parse_time(text, assume_utc=True)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _serial(text: str) -> str:
    try:
        return serials.canonical(text)
    except serials.SerialError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _checked_serial(text: str) -> str:
    """argparse type: the text as given once it reads as a serial (commands need the text itself to tell
    a hex serial from a decimal typed by habit)."""
    _serial(text)
    return text


def _unknown_serial(registry: Any, issuer: str, text: str, serial_hex: str, force_hint: bool) -> str:
    """Why nothing matched ``--serial text``; suggests --force only when the input cannot have meant
    another serial (an all-digit one could be a decimal number typed without ``dec:``)."""
    message = serials.explain_unknown(issuer, text, serial_hex, lambda other: registry.get(issuer, other) is not None,
                                      "write --serial")
    if serials.decimal_reading(text) is not None:
        return message
    return message + ("; use --force to revoke a serial the registry has never seen" if force_hint else "")


# -- commands ----------------------------------------------------------------------------------
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


def cmd_import(args: argparse.Namespace) -> int:
    from directory.ingest.importer import ProgressBar
    from directory.runtime import importer_for, open_config_registry

    config = _config(args)
    registry = open_config_registry(config)
    importer = importer_for(config, registry, actor=f"cli:{_user()}")
    bar = ProgressBar("importing")
    summary = importer.import_paths([Path(p) for p in args.paths], Path(args.certs_dir) if args.certs_dir else None,
                                    progress=bar)
    bar.finish()
    if args.json:
        print(json.dumps(summary.as_dict(), indent=1))
    else:
        for source, reason in summary.refused:
            print(f"refused: {source}: {reason}", file=sys.stderr)
        print(f"imported {summary.imported}, already present {summary.present}, refused {len(summary.refused)}"
              + (f", revocations applied {summary.revoked}" if summary.revoked else ""))
    return EXIT_OK if summary.ok else EXIT_REFUSED


def _registry_for(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from directory.runtime import open_config_registry

    config = _config(args)
    if args.issuer not in {i.name for i in config.issuers}:
        raise Refused(f"unknown issuer {args.issuer!r} (configured: {', '.join(i.name for i in config.issuers)})")
    return open_config_registry(config)


def cmd_revoke(args: argparse.Namespace) -> int:
    from directory.registry import UnknownCertificate
    from directory.revocation import parse_reason

    registry = _registry_for(args)
    serial_hex = _serial(args.serial_text)
    other = serials.decimal_reading(args.serial_text)
    if args.force and other is not None and registry.get(args.issuer, serial_hex) is None \
            and registry.get(args.issuer, serials.to_hex(other)) is not None:
        # forcing 0x1001 when the registry holds 0x3e9 (= 1001): almost surely a decimal typed by habit
        raise Refused(_unknown_serial(registry, args.issuer, args.serial_text, serial_hex, False)
                      + f"; to force the hex serial anyway, write --serial 0x{serial_hex}")
    try:
        reason = parse_reason(args.reason)
        outcome = registry.revoke(args.issuer, serial_hex, reason, at=args.at, invalidity_date=args.invalidity_date,
                                  actor=f"cli:{_user()}", force=args.force)
    except UnknownCertificate:
        raise Refused(_unknown_serial(registry, args.issuer, args.serial_text, serial_hex, True)) from None
    print(f"{args.issuer} 0x{serial_hex}: {outcome.message}" + ("" if outcome.changed else " (nothing changed)"))
    return EXIT_OK


def cmd_release_hold(args: argparse.Namespace) -> int:
    from directory.registry import UnknownCertificate

    registry = _registry_for(args)
    serial_hex = _serial(args.serial_text)
    try:
        outcome = registry.release_hold(args.issuer, serial_hex, actor=f"cli:{_user()}")
    except UnknownCertificate:
        raise Refused(_unknown_serial(registry, args.issuer, args.serial_text, serial_hex, False)) from None
    print(f"{args.issuer} 0x{serial_hex}: {outcome.message}" + ("" if outcome.changed else " (nothing changed)"))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    registry = _registry_for(args)
    serial_hex = _serial(args.serial_text)
    record = registry.get(args.issuer, serial_hex)
    if record is None:
        raise Refused(_unknown_serial(registry, args.issuer, args.serial_text, serial_hex, False))
    data: dict[str, Any] = record.as_dict()
    for key in ("not_before", "not_after", "revocation_time", "invalidity_date"):
        data[key] = format_time(data[key])
    data["serial_colon"] = serials.colon_hex(int(record.serial_hex, 16))
    if args.json:
        print(json.dumps(data, indent=1, ensure_ascii=False))
    else:
        for key, value in data.items():
            if value not in (None, [], ""):
                print(f"{key:16} {', '.join(value) if isinstance(value, list) else value}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """What the publication page shows. ``--json``: {issuer: counts} (a stable contract); ``--json --all``:
    the page's whole data (``health.ok`` for monitoring scripts)."""
    from directory.ops.overview import overview
    from directory.ops.terminal import print_overview
    from directory.runtime import open_config_registry

    config = _config(args)
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

    return serve(_config(args), [ManagedLdapComponent(), CrlComponent(), OcspComponent(), LdapSyncComponent(),
                                         PageComponent(), AdminComponent(), CheckComponent()])


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args)
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
        print(f"{config.path}: {'REFUSED' if unusable else 'OK'} ({len(config.issuers)} issuers)")
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


def cmd_crl_build(args: argparse.Namespace) -> int:
    from directory.crl.builder import CrlBuildError, publishers_for
    from directory.runtime import open_config_registry, open_hsm

    config = _config(args)
    names = [i.name for i in config.issuers]
    if args.issuer and args.issuer not in names:
        raise Refused(f"unknown issuer {args.issuer!r} (configured: {', '.join(names)})")
    from directory.ingest.importer import ProgressBar

    registry = open_config_registry(config)
    hsm = open_hsm(config)
    failed = 0
    results = []
    bar = ProgressBar("crl")
    try:
        for name, publisher in publishers_for(config, hsm, registry).items():
            if args.issuer and name != args.issuer:
                continue
            publisher.on_stage = bar.status
            try:
                if args.delta and not publisher.settings.delta:
                    continue
                crls = [publisher.publish(publisher.delta_target())] if args.delta else publisher.publish_all()
                for crl in crls:
                    results.append({"issuer": name, "file": str(crl.path), "kind": crl.target.kind,
                                    "number": crl.record.number, "entries": crl.entries, "size": crl.size,
                                    "this_update": format_time(crl.this_update),
                                    "next_update": format_time(crl.next_update), "seconds": round(crl.seconds, 3)})
            except CrlBuildError as exc:
                failed += 1
                bar.finish()
                print(f"annuaire: CRL of {name} not published: {exc}", file=sys.stderr)
    finally:
        bar.finish()
        hsm.close()
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(f"{r['file']}: {r['kind']} CRL number {r['number']}, {r['entries']} entries, {r['size']} bytes, "
                  f"next update {r['next_update']} ({r['seconds']} s)")
    return EXIT_REFUSED if failed else EXIT_OK


def cmd_crl_show(args: argparse.Namespace) -> int:
    from directory.crl.inspect import describe_crl

    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise Refused(f"cannot read {args.file}: {exc.strerror}") from None
    issuers = []
    if args.config or os.environ.get("ANNUAIRE_CONFIG") or Path("annuaire.toml").exists():
        issuers = list(_config(args).issuers)
    try:
        info = describe_crl(data, issuers)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    if args.json:
        print(json.dumps(info, indent=1, ensure_ascii=False))
    else:
        for key, value in info.items():
            if key != "entries_sample":
                print(f"{key:22} {value}")
    return EXIT_OK


def cmd_ldap_sync(args: argparse.Namespace) -> int:
    return _ldap_pass(args, "verify" if args.ldap_command == "verify" else ("full" if args.full else "incremental"))


def cmd_ldap_worker(args: argparse.Namespace) -> int:
    """The sync loop ``annuaire serve`` runs as its child; stops on SIGTERM/SIGINT between two chunks."""
    import signal
    import threading

    parent = os.environ.get("ANNUAIRE_SERVICE_PID")
    if parent:  # started by `annuaire serve`: never outlive it, even when it was SIGKILLed

        def watch() -> None:
            while str(os.getppid()) == parent:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)  # before the handler below exists, this simply ends us

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()

    from directory.ldap.loop import SyncLoop
    from directory.ldap.sync import DirectorySync
    from directory.runtime import open_config_registry

    config = _config(args)
    if config.ldap is None:
        raise Refused(f"{config.path} has no [ldap] section")
    registry = open_config_registry(config)
    loop = SyncLoop(DirectorySync(config, registry), float(config.ldap.reconcile_interval or 3600))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: loop.stop())
    try:
        loop.run()
    finally:
        registry.close()
    return EXIT_OK


def _ldap_pass(args: argparse.Namespace, mode: str) -> int:
    from directory.ingest.importer import ProgressBar
    from directory.ldap.client import LdapError
    from directory.ldap.sync import DirectorySync, SyncBusy
    from directory.runtime import open_config_registry

    config = _config(args)
    if config.ldap is None:
        raise Refused(f"{config.path} has no [ldap] section")
    registry = open_config_registry(config)
    sync = DirectorySync(config, registry)
    bar = ProgressBar(f"ldap {mode}", unit="entries")
    try:
        if mode == "verify":
            report = sync.full(dry_run=True, progress=bar)
        elif mode == "full":
            report = sync.full(progress=bar)
        else:
            report = sync.incremental(limit=1_000_000)
    except SyncBusy as exc:
        raise Refused(str(exc)) from None
    except LdapError as exc:
        raise Refused(f"directory: {exc}") from None
    finally:
        bar.finish()
        sync.client.close()
        registry.close()
    data = report.as_dict()
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        drift = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in data["drift"].items() if v)  # type: ignore[union-attr]
        verb = "found" if mode == "verify" else "repaired"
        print(f"ldap {report.mode}: {report.entries_read} entries read, {report.added} added, {report.modified} "
              f"modified, {report.deleted} deleted, drift {verb}: {drift or 'none'}, {len(report.rejected)} refused "
              f"by the directory, {report.unpublishable} certificates no DN template fits ({report.seconds:.2f} s)")
        for item in report.rejected[:20]:
            print(f"  refused: {item['operation']} {item['dn']}: {item['code']} {item['message']}")
    if mode == "verify":
        return EXIT_REFUSED if report.drift.total() or report.unpublishable else EXIT_OK
    return EXIT_REFUSED if report.rejected else EXIT_OK


def cmd_check_publication(args: argparse.Namespace) -> int:
    from directory.check.command import run

    return run(_config(args), args)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from directory.audit import read_lines, verify_chain

    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                report = verify_chain(read_lines(f), args.head)
        except (OSError, ValueError, KeyError) as exc:
            raise Refused(f"cannot read the export {args.file}: {exc}") from None
    else:
        registry = _read_registry(args)
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
        verdict = "intact" if report.ok else f"BROKEN ({len(report.problems)} problems)"
        print(f"audit chain {verdict}: {report.records} records, head {report.head_id} {report.head}")
    return EXIT_OK if report.ok else EXIT_REFUSED


def cmd_audit_export(args: argparse.Namespace) -> int:
    from directory.audit import export_lines

    registry = _read_registry(args)
    try:
        if args.output and args.output != "-":
            target = Path(args.output)
            tmp = target.with_name(f".{target.name}.tmp")
            with open(tmp, "w", encoding="utf-8") as out:
                n = export_lines(registry.iter_audit(args.after), out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
            print(f"{n} audit records written to {target}", file=sys.stderr)
        else:
            export_lines(registry.iter_audit(args.after), sys.stdout)
    finally:
        registry.close()
    return EXIT_OK


def _read_registry(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The configured registry, opened for reading only (no issuer bookkeeping, no audit record)."""
    from directory.registry import open_registry

    return open_registry(_config(args).registry_location())


def _user() -> str:
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.getuid())


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="annuaire", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("ANNUAIRE_LOG_LEVEL", "INFO"))
    parser.add_argument("--log-format", choices=["json", "human"], default=os.environ.get("ANNUAIRE_LOG_FORMAT"),
                        help="json lines, or human lines (default: human on a terminal, json otherwise)")
    common = argparse.ArgumentParser(add_help=False)
    config_help = "configuration file (default: $ANNUAIRE_CONFIG or ./annuaire.toml)"
    parser.add_argument("--config", "-c", help=config_help)
    common.add_argument("--config", "-c", help=config_help, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

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

    p = sub.add_parser("import", parents=[common], help="import certificates (PEM, DER, folders, index.txt)")
    p.add_argument("paths", nargs="+")
    p.add_argument("--certs-dir", help="where an index.txt's certificates are (default: newcerts/, certs/)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import)

    def target(p: argparse.ArgumentParser) -> None:
        p.add_argument("--issuer", required=True)
        p.add_argument("--serial", required=True, type=_checked_serial, dest="serial_text",
                       help="hex as openssl prints it (1A2B, 0x1A2B, 1A:2B); decimal only as dec:6699")

    p = sub.add_parser("revoke", parents=[common], help="revoke a certificate")
    target(p)
    p.add_argument("--reason", required=True)
    p.add_argument("--invalidity-date", type=_time)
    p.add_argument("--at", type=_time, help="revocation time (default: now)")
    p.add_argument("--force", action="store_true", help="revoke a serial the registry has never seen")
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("release-hold", parents=[common], help="release a certificateHold")
    target(p)
    p.set_defaults(func=cmd_release_hold)

    p = sub.add_parser("show", parents=[common], help="show one certificate's registry entry")
    target(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("status", parents=[common],
                       help="what the publication page shows: health, CAs, CRLs, OCSP, directory")
    p.add_argument("--json", action="store_true", help="counts by issuer and status (with --all: everything)")
    p.add_argument("--all", action="store_true", help="with --json: the page's whole data")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("serve", parents=[common], help="run the service")
    p.set_defaults(func=cmd_serve)

    crl = sub.add_parser("crl", help="CRL operations").add_subparsers(dest="crl_command", required=True)
    p = crl.add_parser("build", parents=[common], help="build, sign, check and publish CRLs now")
    p.add_argument("--issuer", help="only this issuer (default: all)")
    p.add_argument("--delta", action="store_true", help="only the delta CRLs (issuers with delta = true)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_crl_build)
    p = crl.add_parser("show", parents=[common], help="describe a CRL file (and verify it when a config is given)")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_crl_show)

    ldap = sub.add_parser("ldap", help="directory operations").add_subparsers(dest="ldap_command", required=True)
    p = ldap.add_parser("sync", parents=[common], help="bring the directory in line with the registry")
    p.add_argument("--full", action="store_true",
                   help="read the whole directory and repair every difference (default: pending changes only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ldap_sync)
    p = ldap.add_parser("verify", parents=[common],
                        help="report differences between registry and directory, change nothing (exit 1: drift)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ldap_sync)
    p = ldap.add_parser("worker", parents=[common], help="the sync loop (started by `annuaire serve`)")
    p.set_defaults(func=cmd_ldap_worker)

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

    from directory.check.command import add_parser as add_check_parser

    add_check_parser(sub, common, cmd_check_publication)

    p = sub.add_parser("check-config", parents=[common],
                       help="validate the configuration and what the HSM offers for its keys, and exit")
    p.add_argument("--json", action="store_true")
    p.add_argument("--offline", action="store_true", help="do not open the HSM")
    p.set_defaults(func=cmd_check_config)
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
    from directory.registry import RegistryError

    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"annuaire: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (HsmError, RegistryError) as exc:  # PinRefused included: named as the HSM's answer
        print(f"annuaire: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except Refused as exc:
        print(f"annuaire: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
