"""``[check]``: the publication checker's pace, allowances and where it looks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from directory.config.reader import Section, parse_duration


@dataclass(frozen=True)
class CheckConfig:
    """The publication checker (``[check]``): a relying party against our own public channels.

    Durations in seconds. ``full_cycle``: every certificate is checked at least once in it (the rolling
    sample); ``recent``: how long a certificate whose status changed is checked at every ``interval``.
    A channel may disagree with the registry for its allowance after a change (OCSP ``ocsp_grace``, CRLs
    their rebuild delay + ``crl_margin``, the directory ``ldap_grace``) before it is a mismatch.
    ``url``: where to reach the public channels (default: this node's own listener).
    """

    enabled: bool = True
    interval: int = 10
    full_cycle: int = 86400
    recent: int = 600
    fail_readiness: bool = False
    ocsp_grace: int = 5
    crl_margin: int = 15
    ldap_grace: int = 30
    url: str | None = None
    ldap_bind: str = "anonymous"  # or "service": bind as [ldap] bind_dn (a directory closed to anonymous reads)


def check_section(s: Section) -> CheckConfig:
    values: dict[str, Any] = {}
    for key in ("enabled", "fail_readiness"):
        if key in s.table:
            values[key] = s.get(key, bool)
    for key, low, high in (("interval", 1, 3600), ("full_cycle", 1, 365 * 86400), ("recent", 0, 86400),
                           ("ocsp_grace", 0, 3600), ("crl_margin", 0, 86400), ("ldap_grace", 0, 86400)):
        if key in s.table:
            try:
                values[key] = parse_duration(s.table[key])
            except ValueError as exc:
                raise s.error(key, str(exc)) from None
            if not low <= values[key] <= high:
                raise s.error(key, f"must be between {low} and {high} seconds")
    if "url" in s.table:
        url = s.get("url", str).rstrip("/")
        if not url.startswith(("http://", "https://")) or not urlsplit(url).hostname:
            raise s.error("url", "must be an http:// or https:// URL")
        values["url"] = url
    if "ldap_bind" in s.table:
        values["ldap_bind"] = s.get("ldap_bind", str)
        if values["ldap_bind"] not in ("anonymous", "service"):
            raise s.error("ldap_bind", 'must be "anonymous" (a relying party) or "service" ([ldap] bind_dn)')
    check = CheckConfig(**values)
    if check.full_cycle < check.interval:
        raise s.error("full_cycle", "must be at least interval")
    return check
