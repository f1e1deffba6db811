"""The operator view, served on the admin listener (authenticated): ``GET /api/v1/operations`` (JSON) and
``GET /ops`` (the same as a page). What the public page no longer shows: every problem with its details,
the readiness reasons and warnings, the directory's synchronisation (outbox depth and lag, passes, drift,
dead letters), the publication checkers' reports per node.

It is the data ``annuaire status --json --all`` prints (``overview()``), with the running service's own
readiness and the checkers' reports.
"""

from __future__ import annotations

from html import escape
from typing import Any

from directory.config import Config
from directory.ops.html import STYLE, stamp, when
from directory.ops.overview import REPORT_STALE, overview
from directory.registry import Registry
from directory.registry.checks import recent_reports


def operations(config: Config, registry: Registry, now: float, readiness: dict[str, str],
               warnings: dict[str, str]) -> dict[str, Any]:
    """The operator's data (blocking: reads the registry)."""
    data = overview(config, registry, now)
    problems = data["health"]["problems"]
    for part, reason in readiness.items():
        problem = {"part": part, "text": reason}
        if problem not in problems:
            problems.append(problem)
    data["health"]["ok"] = not problems
    data["readiness"] = {"ready": not readiness, "problems": readiness, "warnings": warnings}
    data["checks"] = recent_reports(registry, max(REPORT_STALE, 3 * config.check.interval), now)
    return data


def render_operations(data: dict[str, Any]) -> str:
    """The operator page (English: operators read logs and metrics in English too)."""
    now = data["generated_at"]
    out = ['<!doctype html><html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>Operations</title><style>{STYLE}</style></head><body>",
           "<header><h1>Operations</h1><p>The service as its operators see it: every problem with its details, "
           'the directory\'s synchronisation, the publication checks. The same as JSON: '
           '<a href="/api/v1/operations">/api/v1/operations</a>.</p></header><main>']
    problems = data["health"]["problems"]
    items = "".join(f"<li><strong>{escape(p['part'])}</strong>: {escape(p['text'])}</li>" for p in problems)
    state = ('<p class="state-ok">No problem.</p>' if not problems
             else f'<p class="state-bad">{len(problems)} problem{"s" * (len(problems) != 1)}:</p><ul>{items}</ul>')
    out.append(f'<section class="health {"ok" if not problems else "bad"}" aria-labelledby="health">'
               f'<h2 id="health">Health</h2>{state}{_warnings(data["readiness"]["warnings"])}</section>')
    if data["directory"] is not None:
        out.append(_directory(data["directory"], now))
    out.append(_checks(data["checks"], now))
    out.append(f"</main><footer><p>Generated {stamp(now)}.</p></footer></body></html>")
    return "".join(out)


def _warnings(warnings: dict[str, str]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li><strong>{escape(k)}</strong>: {escape(v)}</li>" for k, v in warnings.items())
    return f"<p>Readiness warnings (not failing <code>/readyz</code>):</p><ul>{items}</ul>"


def _directory(d: dict[str, Any], now: int) -> str:
    def since(epoch: int | None) -> str:
        return when(epoch, now, "en")

    error = (f'<span class="state-bad">failing ({d["failures"]} attempts): {escape(d["last_error"] or "")}</span>'
             if d["failures"] else '<span class="state-ok">reachable</span>')
    if d["last_verify"] is None:
        verify = "not run yet"
    else:
        verify = f"{since(d['last_verify'])}: {d['last_verify_drift']} differences found"
        if d["last_verify_drift"] and d.get("last_verify_repaired"):
            verify += f", repaired by the full synchronisation of {since(d['last_verify_repaired'])}"
    refused = ""
    if d.get("refused"):
        items = "".join(f"<li><code>{escape(r['dn'] or r['issuer'])}</code>: {escape(r['reason'])} "
                        f"({r['attempts']} attempts, next {since(r['next_attempt_at'])})</li>"
                        for r in d.get("refusals", []))
        refused = (f'<dt>Writes refused</dt><dd><span class="state-bad">{d["refused"]} refused by the directory, '
                   f"kept and retried</span><ul>{items}</ul></dd>")
    waiting = str(d["outbox_depth"]) + (f" (the oldest for {d['lag_seconds']} s)" if d["outbox_depth"] else "")
    repaired = f", {d['last_full_repaired']} differences repaired" if d["last_full_repaired"] else ""
    urls = ", ".join(f"<code>{escape(u)}</code>" for u in d["urls"])
    return ('<section aria-labelledby="directory"><h2 id="directory">Directory (LDAP) synchronisation</h2><dl>'
            f"<dt>Servers</dt><dd>{urls}, base <code>{escape(d['suffix'])}</code></dd>"
            f"<dt>State</dt><dd>{error}</dd>"
            f"<dt>Last full synchronisation</dt><dd>{since(d['last_full'])}{repaired}</dd>"
            f"<dt>Last change applied</dt><dd>{since(d['last_incremental'])}</dd>"
            f"<dt>Changes waiting (outbox)</dt><dd>{waiting}</dd>{refused}"
            f"<dt>Last verification</dt><dd>{verify}</dd></dl></section>")


def _checks(reports: list[dict[str, Any]], now: int) -> str:
    if not reports:
        return ('<section aria-labelledby="checks"><h2 id="checks">Publication checks</h2>'
                "<p>No recent report (the checker is off, or no node ran it lately).</p></section>")
    rows = "".join(f"<tr><th scope=\"row\"><code>{escape(str(r.get('node', '?')))}</code></th>"
                   f"<td>{when(float(r.get('at', 0)), now, 'en')}</td>"
                   f"<td>{escape(str(r.get('text') or 'every channel agrees with the registry'))}</td></tr>"
                   for r in reports)
    return ('<section aria-labelledby="checks"><h2 id="checks">Publication checks</h2><div class="scroll"><table>'
            '<caption>The last report of each node\'s checker</caption><thead><tr><th scope="col">Node</th>'
            '<th scope="col">When</th><th scope="col">Findings</th></tr></thead><tbody>'
            f"{rows}</tbody></table></div></section>")
