"""Directory commands: ``ldap sync`` (incremental or ``--full``), ``ldap verify``, ``ldap worker``,
``ldap bootstrap`` (an operator's own slapd readied once), ``ldap export --ldif`` (a bulk load's file)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

from directory.cli.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, config_of
from directory.cli.progress import ProgressBar
from directory.refusal import Refused
from directory.wording import noun, plural


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

    config = config_of(args)
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


def cmd_ldap_bootstrap(args: argparse.Namespace) -> int:
    """Suffix, branches and the service's bind entry on the operator's slapd, as its administrator."""
    from directory.ldap.bootstrap import bootstrap
    from directory.ldap.client import LdapError

    config = config_of(args)
    if config.ldap is None:
        raise Refused(f"{config.path} has no [ldap] section")
    if config.ldap.managed:
        raise Refused("[ldap] managed = true: the service creates its own slapd's entries at start")
    password = _admin_password(args)
    try:
        report = bootstrap(config.ldap, args.admin_dn, password)
    except LdapError as exc:
        raise Refused(f"directory: {exc}") from None
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        for added in report.added:
            print(f"added {added}")
        print(f"{report.url}: {len(report.added)} entries added"
              + (f", password of {config.ldap.bind_dn} set" if report.password_set else "")
              + f"; {config.ldap.bind_dn} binds")
    return EXIT_OK


def cmd_ldap_export(args: argparse.Namespace) -> int:
    """The directory as LDIF for ``slapadd -q``, to standard output or atomically into ``--output``."""
    import sys

    from directory.ldap.export import LdifExport
    from directory.ldap.skeleton import service_entry
    from directory.ldap.slapd import SlapdError, hash_password
    from directory.ldap.sync import SyncBusy, sync_lock
    from directory.runtime import open_config_registry

    if args.json and not args.output:
        print("annuaire: --json needs --output FILE (the LDIF goes to standard output)", file=sys.stderr)
        return EXIT_USAGE
    config = config_of(args)
    if config.ldap is None:
        raise Refused(f"{config.path} has no [ldap] section")
    bind_entry = None
    if args.bind_entry:
        try:
            bind_entry = service_entry(config.ldap.bind_dn, hash_password(config.ldap.read_password()))
        except (SlapdError, OSError) as exc:
            raise Refused(f"the service's bind entry: {exc}") from None
    registry = open_config_registry(config)
    bar = ProgressBar("ldap export", unit="entries")
    try:
        with sync_lock(config, wait=False), _target(args.output) as out:
            export = LdifExport(config, registry)
            report = export.write(out, suffix=not args.without_suffix, bind_entry=bind_entry,
                                  progress=lambda n: bar.status(f"{n:,} entries"))
            out.flush()
        if args.mark_synced:
            export.mark(report)
    except SyncBusy as exc:
        raise Refused(f"{exc}: stop it first (a bulk load replaces the directory)") from None
    except OSError as exc:
        raise Refused(f"cannot write {args.output or 'standard output'}: {exc.strerror or exc}") from None
    finally:
        bar.finish()
        registry.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print(f"ldap export: {report.entries:,} {noun(report.entries, 'entry')} ({report.end_entities:,} holders "
              f"and servers with {report.certificates:,} {noun(report.certificates, 'certificate')}, "
              f"{report.ca_entries} CA, {report.intermediate} intermediate), {report.bytes / 1e6:.1f} MB"
              f"{' to ' + args.output if args.output else ''}; "
              f"{plural(report.unpublishable, 'certificate')} no DN template fits; "
              + ("registry marked as synced up to this export" if report.marked else "registry left as it was")
              + f" ({report.seconds:.2f} s)", file=sys.stderr if not args.output else sys.stdout)
    return EXIT_OK


@contextlib.contextmanager
def _target(path: str | None) -> Iterator[BinaryIO]:
    """Standard output, or a temporary file beside ``path`` renamed over it once complete (a failed or
    interrupted export leaves the previous file, never half of one)."""
    import sys
    import tempfile

    if not path:  # a buffer of 1 MiB, as for a file: a pipe to slapadd takes fewer, larger writes
        with open(sys.stdout.fileno(), "wb", buffering=1 << 20, closefd=False) as handle:
            yield handle
        return
    target = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".ldap-export-", suffix=".tmp", dir=os.path.dirname(target))
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _admin_password(args: argparse.Namespace) -> str:
    """From a file, a variable, or typed at a prompt: never from the command line (ps shows it to all)."""
    import getpass
    import sys

    if args.admin_password_file:
        try:
            with open(args.admin_password_file, encoding="utf-8") as fh:
                password = fh.read().rstrip("\r\n")
        except OSError as exc:
            raise Refused(f"cannot read {args.admin_password_file}: {exc.strerror}") from None
    elif args.admin_password_env:
        password = os.environ.get(args.admin_password_env, "")
        if not password:
            raise Refused(f"environment variable {args.admin_password_env} is not set or empty")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password of {args.admin_dn}: ")
    else:
        raise Refused("give the administrator's password with --admin-password-file or --admin-password-env "
                      "(or run on a terminal to be asked for it)")
    if not password:
        raise Refused("the administrator's password is empty")
    return password


def _ldap_pass(args: argparse.Namespace, mode: str) -> int:
    from directory.ldap.client import LdapError
    from directory.ldap.sync import DirectorySync, SyncBusy
    from directory.runtime import open_config_registry

    config = config_of(args)
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
        print(f"ldap {report.mode}: {plural(report.entries_read, 'entry')} read, {report.added} added, "
              f"{report.modified} modified, {report.deleted} deleted, drift {verb}: {drift or 'none'}, "
              f"{len(report.rejected)} refused by the directory, {plural(report.unpublishable, 'certificate')} "
              f"no DN template fits ({report.seconds:.2f} s)")
        for item in report.rejected[:20]:
            print(f"  refused: {item['operation']} {item['dn']}: {item['text']}")
    if mode == "verify":
        return EXIT_REFUSED if report.drift.total() or report.unpublishable else EXIT_OK
    return EXIT_REFUSED if report.rejected else EXIT_OK


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The parsers of ldap sync, ldap verify, ldap worker, ldap bootstrap and ldap export."""
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
    p = ldap.add_parser("bootstrap", parents=[common],
                        help="create the suffix, the branches and the service's bind entry on your own slapd")
    p.add_argument("--admin-dn", required=True, help="the directory's administrator (e.g. its rootdn)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--admin-password-file", metavar="FILE", help="file holding the administrator's password")
    secret.add_argument("--admin-password-env", metavar="VAR", help="environment variable holding it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ldap_bootstrap)
    p = ldap.add_parser("export", parents=[common],
                        help="write the whole directory as LDIF, for slapadd -q into an empty directory")
    p.add_argument("--ldif", action="store_true", required=True, help="LDIF (RFC 2849): the one format")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write FILE (replaced once complete) instead of standard output")
    p.add_argument("--mark-synced", action="store_true",
                   help="record the export as what the directory holds: its outbox rows settled, the layout "
                        "marked synced (the bulk load; never while a live directory is to receive those rows)")
    p.add_argument("--without-suffix", action="store_true",
                   help="leave the suffix entry out (loaded from deploy/slapd/seed.ldif)")
    p.add_argument("--bind-entry", action="store_true",
                   help="include the service's bind entry ([ldap] bind_dn, its password hashed by slappasswd)")
    p.add_argument("--json", action="store_true", help="the summary as JSON (with --output)")
    p.set_defaults(func=cmd_ldap_export)
