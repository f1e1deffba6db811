"""``annuaire status`` in a terminal: what the publication page shows, as text, coloured on a TTY."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from directory.ops.overview import age_in_words, size_in_words
from directory.wording import noun, plural

_CODES = {"ok": "32", "bad": "31;1", "warn": "33", "dim": "2", "bold": "1"}


class Painter:
    """ANSI colours when writing to a terminal and ``NO_COLOR`` is not set (https://no-color.org)."""

    def __init__(self, stream: TextIO) -> None:
        self.on = stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"

    def __call__(self, style: str, text: str) -> str:
        return f"\033[{_CODES[style]}m{text}\033[0m" if self.on else text


def _when(epoch: int | None) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC") if epoch is not None else "never"


def print_overview(data: dict[str, Any], stream: TextIO = sys.stdout) -> None:
    paint = Painter(stream)
    now = data["generated_at"]
    out: list[str] = []
    health = data["health"]
    if health["ok"]:
        out.append(paint("ok", "health: all publication channels up to date"))
    else:
        out.append(paint("bad", f"health: {len(health['problems'])} problem(s)"))
        out += [f"  {paint('bad', '!')} {p['part']}: {p['text']}" for p in health["problems"]]
    out.append("")
    out.append(f"{'issuer':20} {'good':>8} {'revoked':>8} {'on-hold':>8}")
    for issuer in data["issuers"]:
        c = issuer["counts"]
        out.append(f"{issuer['name']:20} {c['good']:>8} {c['revoked']:>8} {c['on-hold']:>8}")
    for issuer in data["issuers"]:
        out.append("")
        out.append(paint("bold", f"{issuer['name']}: {issuer['common_name']}"))
        out.append(f"  certificate  {issuer['certificate_url']}  valid until {_when(issuer['not_after'])}")
        out.append(f"  sha256       {issuer['sha256']}")
        out.append(f"  ocsp         {issuer['ocsp_url'] or paint('dim', 'none (CRL only)')}")
        for crl in issuer["crls"]:
            label = crl["kind"] if crl["scope"] == "main" else f"part {crl['scope'][1:]}"
            if not crl["published"]:
                out.append(f"  crl {label:8} {paint('bad', 'not published')}  {crl['url']}")
                continue
            left = crl["next_update"] - now
            nxt = (paint("bad", "EXPIRED") if crl["expired"]
                   else paint("warn" if left < 3600 else "ok", f"next in {age_in_words(left)}"))
            out.append(f"  crl {label:8} #{crl['number']:<6} {crl['entries']:>7} {noun(crl['entries'], 'entry'):7} "
                       f"{size_in_words(crl['size']):>9}  published {age_in_words(crl['age_seconds'])} ago, {nxt}  "
                       f"{crl['url']}")
    d = data["directory"]
    if d is not None:
        out.append("")
        out.append(paint("bold", f"directory: {', '.join(d['urls'])} ({d['suffix']})"))
        state = (paint("bad", f"failing ({d['failures']}): {d['last_error']}") if d["failures"]
                 else paint("ok", "reachable"))
        out.append(f"  state        {state}")
        last_full = d["last_full"]
        if last_full:
            out.append(f"  last full    {_when(last_full)} ({age_in_words(now - last_full)} ago), "
                       f"{d['last_full_repaired'] or 0} repaired")
        else:
            out.append("  last full    never")
        waiting = str(d["outbox_depth"])
        if d["outbox_depth"]:
            waiting += f", oldest {age_in_words(d['lag_seconds'])}"
        out.append(f"  waiting      {paint('warn' if d['outbox_depth'] else 'ok', waiting)}")
        if d.get("refused"):
            out.append("  refused      " + paint("bad", f"{d['refused']} kept and retried"))
            out += [f"    {r['dn'] or r['issuer']}: {r['reason']}" for r in d.get("refusals", [])]
        if d["last_verify"] is not None:
            drift = d["last_verify_drift"] or 0
            repaired = drift and d.get("last_verify_repaired")
            out.append(f"  last verify  {_when(d['last_verify'])}: "
                       + paint("warn" if drift and not repaired else "ok", plural(drift, "difference"))
                       + (f", repaired by the full sync of {_when(repaired)}" if repaired else ""))
    print("\n".join(out), file=stream)
