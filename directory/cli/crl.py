"""CRL commands: ``crl build`` (now, from the registry), ``crl publish`` (a CRL signed elsewhere) and
``crl show`` (a file described)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from directory.cli.common import EXIT_OK, EXIT_REFUSED, config_of, config_path, user
from directory.cli.progress import ProgressBar
from directory.inputs import format_time
from directory.refusal import Refused
from directory.wording import plural

if TYPE_CHECKING:
    from directory.crl import readahead


class PlainBuild(NamedTuple):
    """`crl build` as the command line says it plainly (``plain_build``)."""

    config: str | None
    issuer: str | None


def plain_build(words: Sequence[str]) -> PlainBuild | None:
    """``[--config FILE] crl build [--config FILE] [--issuer NAME] [--json]``, each option spelled out
    (``--config=FILE`` too): words the full parser reads as `crl build` and cannot refuse (no value it checks),
    so ``main`` makes only the crl group's parsers and begins the read at once (``read_ahead``). None for
    anything else or anything unusual (``--delta``, ``--log-level``, ``-cFILE``, an abbreviation, ``--help``):
    the whole command line is then parsed as ever, and the command begins its read once parsed."""
    config, issuer, place = None, None, 0  # place: 0 before `crl`, 1 after it, 2 after `build`
    allowed = ({"--config", "-c"}, set(), {"--config", "-c", "--issuer", "--json"})
    words = list(words)
    while words:
        word = words.pop(0)
        if not word.startswith("-"):
            if (place, word) not in ((0, "crl"), (1, "build")):
                return None
            place += 1
            continue
        name, equals, value = word.partition("=")
        if name not in allowed[place]:
            return None
        if name == "--json":
            if equals:
                return None
            continue
        if not equals:
            if not words or words[0].startswith("-"):  # (argparse may take it for an option: an error)
                return None
            value = words.pop(0)
        if name in ("--config", "-c"):
            config = value
        else:
            issuer = value
    return PlainBuild(config, issuer) if place == 2 else None


def read_ahead(build: PlainBuild) -> readahead.ReadAhead | None:
    """`crl build`'s read ahead begun from the command line's words alone (``main``, before the other command
    groups are imported and the parsers made). A guess: the builder uses it only when the validated
    configuration says the same (``readahead``)."""
    from directory.crl import readahead

    return readahead.start(config_path(argparse.Namespace(config=build.config)), build.issuer)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """`crl build`'s interpreter: no cyclic garbage collection and a 0.5 ms GIL switch interval, restored after
    (for whoever runs the command in-process). The collector ran some 60 times over the objects of the modules
    being imported (5-10% of their import time) for a command whose memory is its CRL's bytes (reference
    counting frees them); the reading thread needs the GIL a few times a run (the run's bytes, its queue)
    while the main one imports: handed over within 0.5 ms instead of 5, the read is not paced by the imports."""
    import gc

    collecting = gc.isenabled()
    gc.disable()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        if collecting:
            gc.enable()


def cmd_crl_build(args: argparse.Namespace) -> int:
    from directory.crl import readahead

    # The first full CRL's entries read from here on (SQLite, without the GIL), while this process imports
    # and reads its configuration: the builder uses them only if they are what it would read (``readahead``).
    # ``main`` began it already when the command line said plainly where (``plain_build``).
    ahead = getattr(args, "read_ahead", None)
    if ahead is None and not args.delta:
        ahead = readahead.start(config_path(args), args.issuer)
    try:
        with quiet():
            return _crl_build(args, ahead)
    finally:
        if ahead is not None:
            ahead.close()  # unless a build took it (then closed already)


def _crl_build(args: argparse.Namespace, ahead: readahead.ReadAhead | None) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from directory.crl.builder import CrlBuildError, publishers_for
    from directory.runtime import hsm_settings, open_config_registry, open_hsm

    config = config_of(args)
    names = [i.name for i in config.issuers]
    if args.issuer and args.issuer not in names:
        raise Refused(f"unknown issuer {args.issuer!r} (configured: {', '.join(names)})")
    registry = open_config_registry(config)
    # The PKCS#11 stack imported and the module initialised on a thread: the first build reads its entries
    # meanwhile (SQLite, without the GIL), and waits for its key only once they are read and checked.
    settings = hsm_settings(config)  # the PIN read here: its errors are the configuration's, as before
    opening = ThreadPoolExecutor(1, thread_name_prefix="hsm-open")
    hsm = opening.submit(open_hsm, config, settings)
    opening.shutdown(wait=False)
    failed = 0
    results = []
    bar = ProgressBar("crl")
    try:
        for name, publisher in publishers_for(config, hsm, registry).items():
            if args.issuer and name != args.issuer:
                continue
            publisher.on_stage = bar.status
            if ahead is not None and ahead.issuer == name:
                publisher.read_ahead, ahead = ahead, None
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
        hsm.result()  # an HSM that could not be opened is an error even when no build needed it
    finally:
        bar.finish()
        if hsm.exception() is None:
            hsm.result().close()
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(f"{r['file']}: {r['kind']} CRL number {r['number']}, {plural(r['entries'], 'entry')}, "
                  f"{plural(r['size'], 'byte')}, next update {r['next_update']} ({r['seconds']} s)")
    return EXIT_REFUSED if failed else EXIT_OK


def cmd_crl_publish(args: argparse.Namespace) -> int:
    """Check a CRL signed elsewhere (an offline root's ARL, the previous system's last CRL) and serve it."""
    from directory.crl.publish import MAX_CRL_BYTES, publish_crl
    from directory.publication import crl_dir
    from directory.runtime import open_config_registry

    config = config_of(args)
    names = [i.name for i in config.issuers]
    if args.issuer not in names:
        raise Refused(f"unknown issuer {args.issuer!r} (configured: {', '.join(names)})")
    try:
        with open(args.file, "rb") as fh:
            data = fh.read(MAX_CRL_BYTES + 1)
    except OSError as exc:
        raise Refused(f"cannot read {args.file}: {exc.strerror}") from None
    registry = open_config_registry(config)
    try:
        published = publish_crl(config.issuer(args.issuer), registry, crl_dir(config), config.http.base_url, data,
                                f"cli:{user()}")
    finally:
        registry.close()
    result = {"issuer": args.issuer, "file": str(published.path), "number": published.record.number,
              "entries": published.entries, "size": published.size, "this_update": format_time(published.this_update),
              "next_update": format_time(published.next_update), "sha256": published.sha256}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['file']}: published CRL number {result['number']} of {args.issuer}, {result['entries']} "
              f"entries, next update {result['next_update']}")
    return EXIT_OK


def cmd_crl_show(args: argparse.Namespace) -> int:
    from directory.crl.inspect import describe_crl

    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise Refused(f"cannot read {args.file}: {exc.strerror}") from None
    issuers = []
    if config_path(args) is not None:
        issuers = list(config_of(args).issuers)
    try:
        info = describe_crl(data, issuers)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    if args.json:
        print(json.dumps(info, indent=1, ensure_ascii=False))
    else:
        for key, value in info.items():
            print(f"{key:22} {value}")
    return EXIT_OK


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The parsers of crl build, crl publish and crl show."""
    crl = sub.add_parser("crl", help="CRL operations").add_subparsers(dest="crl_command", required=True)
    p = crl.add_parser("build", parents=[common], help="build, sign, check and publish CRLs now")
    p.add_argument("--issuer", help="only this issuer (default: all)")
    p.add_argument("--delta", action="store_true", help="only the delta CRLs (issuers with delta = true)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_crl_build)
    p = crl.add_parser("publish", parents=[common],
                       help="check a CRL signed elsewhere (an offline root's ARL, a moved CA's last CRL) and serve it")
    p.add_argument("--issuer", required=True)
    p.add_argument("file", help="the CRL, DER or PEM")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_crl_publish)
    p = crl.add_parser("show", parents=[common], help="describe a CRL file (and verify it when a config is given)")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_crl_show)
