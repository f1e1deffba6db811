"""``annuaire check-config``: what the service will need, checked before it starts (systemd's ExecStartPre).

The configuration is read and validated (exit 2 on an error); the configured certificates are checked
(``config.certificates``: CA flags and key usages, OCSP responder EKU and nocheck, validity); unless
``--offline``, the token is opened and logged into read-only, and every configured key is found by its
label and proven to match its certificate with one test signature verified under the certificate's
public key. A token or key label that is not there is reported with what the module does hold.
Exit codes: 0 OK (warnings allowed), 1 a problem the service would hit, 2 configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from directory.cli.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, config_of
from directory.wording import plural

if TYPE_CHECKING:
    from directory.config import Config
    from directory.config.certificates import Finding
    from directory.hsm.capabilities import TokenReport

# token flags that say the user PIN is close to being locked (CKF_USER_PIN_COUNT_LOW, _FINAL_TRY, _LOCKED)
_PIN_FLAGS = {0x10000: "the user PIN was refused recently (count low)", 0x20000: "the user PIN has one try left",
              0x40000: "the user PIN is locked"}


def cmd_check_config(args: argparse.Namespace) -> int:
    from directory.config import ConfigError
    from directory.config.certificates import certificate_findings

    try:
        config = config_of(args)
    except ConfigError as exc:  # exit 2, said on stderr; with --json also as JSON on stdout
        print(f"annuaire: configuration error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"config": exc.file, "ok": False, "error": "configuration", "key": exc.key,
                              "problem": exc.problem, "detail": str(exc), "config_error": str(exc)},
                             indent=1, ensure_ascii=False))
        return EXIT_USAGE
    findings = certificate_findings(config, time.time())
    report = None
    if not args.offline:
        report, found = hsm_findings(config)
        findings += found
    problems = [f for f in findings if f.level == "problem"]
    warnings = [f for f in findings if f.level == "warning"]
    if args.json:
        hsm_problem = next((f.text for f in problems if f.where == "hsm"), None)
        print(json.dumps({"config": str(config.path), "ok": not problems, "issuers": [i.name for i in config.issuers],
                          "ldap": config.ldap is not None, "admin": config.admin is not None,
                          "hsm": report.as_dict() if report is not None else None, "hsm_problem": hsm_problem,
                          "problems": [f.as_dict() for f in problems], "warnings": [f.as_dict() for f in warnings]},
                         indent=1))
    else:
        verdict = "OK" if not problems else f"NOT OK, {plural(len(problems), 'problem')}"
        print(f"{config.path}: {verdict} ({plural(len(config.issuers), 'issuer')})")
        for line in report.lines() if report is not None else []:
            print(f"  {line}")
        for finding in warnings + problems:
            print(f"  {finding.level.upper()}: {finding.where}: {finding.text}")
    for finding in problems:
        print(f"annuaire: {finding.where}: {finding.text}", file=sys.stderr)
    return EXIT_REFUSED if problems else EXIT_OK


def hsm_findings(config: Config) -> tuple[TokenReport | None, list[Finding]]:
    """Log into the token (read-only), find every configured key, sign and verify once with each."""
    from directory.config.certificates import Finding
    from directory.hsm.signer import HsmUnavailable
    from directory.runtime import key_uses, open_hsm

    quiet = logging.getLogger("directory.hsm")  # what it would log is in the findings; --log-level DEBUG shows it
    if not quiet.isEnabledFor(logging.DEBUG):
        quiet.setLevel(logging.CRITICAL)
    try:
        hsm = open_hsm(config)
    except HsmUnavailable as exc:  # the module itself cannot be loaded
        return None, [Finding("problem", "hsm", str(exc))]
    try:
        uses = key_uses(config, hsm)
        report = hsm.inspect(uses.values())
    except HsmUnavailable as exc:  # token not there (the message lists those that are), PIN refused, module failing
        return None, [Finding("problem", "hsm", str(exc))]
    finally:
        hsm.close()
    found = [Finding("warning", "hsm", f"token {report.token.label!r}: {text}")
             for bit, text in _PIN_FLAGS.items() if report.token.flags & bit]
    for where, key in zip(uses, report.keys, strict=True):
        if key.problem:
            found.append(Finding("problem", where, key.problem))
        elif key.warning:
            found.append(Finding("warning", where, key.warning))
    return report, found


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("check-config", parents=[common],
                       help="check the configuration and what the service needs (HSM login, keys matching their "
                            "certificates, certificate usages and validity), and exit")
    p.add_argument("--json", action="store_true")
    p.add_argument("--offline", action="store_true", help="do not open the HSM")
    p.set_defaults(func=cmd_check_config)


__all__ = ["add_parser", "cmd_check_config", "hsm_findings"]
