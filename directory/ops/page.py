"""``GET /``: the publication page, as CAs publish theirs; ``GET /status.json``: the same data.

Server-rendered HTML, no script, no external asset (the stylesheet is inline and allowed by its hash
in the Content-Security-Policy), tables with captions and header scopes, a single column on a phone.
The data is ``overview()`` (committed registry rows) plus the service's readiness checks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING, Any

from aiohttp import web

from directory.ops.overview import age_in_words, overview, size_in_words

if TYPE_CHECKING:
    from directory.service.app import Service

STYLE = """
:root{color-scheme:light;--fg:#1b1b1b;--muted:#4a4a4a;--ok:#0b6b2c;--bad:#a10f0f;--line:#c9ced6;--bg:#fff;--band:#eef2f7}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header,main,footer{max-width:72rem;margin:0 auto;padding:1rem}
header{border-bottom:4px solid #000091}
h1{font-size:1.6rem;margin:.2rem 0}
h2{font-size:1.3rem;margin:2rem 0 .5rem;border-bottom:1px solid var(--line)}
h3{font-size:1.1rem;margin:1.2rem 0 .4rem}
a{color:#000091}
a:focus,a:hover{outline:2px solid #000091;outline-offset:2px}
.health{padding:.75rem 1rem;border-left:6px solid;background:var(--band);margin:1rem 0}
.health h2{margin-top:0}
.health.ok{border-color:var(--ok)}
.health.bad{border-color:var(--bad)}
.state-ok{color:var(--ok);font-weight:600}
.state-bad{color:var(--bad);font-weight:600}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}
caption{text-align:left;font-weight:600;padding:.25rem 0}
th,td{border:1px solid var(--line);padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:var(--band)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:.5rem 0}
dt{font-weight:600}
dd{margin:0;overflow-wrap:anywhere}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;overflow-wrap:anywhere}
footer{color:var(--muted);font-size:.9rem;border-top:1px solid var(--line)}
@media (max-width:40rem){dl{grid-template-columns:1fr}dt{margin-top:.5rem}}
""".strip()

STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
SECURITY_HEADERS = {
    "Content-Security-Policy": f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
READINESS_CACHE = 5.0  # seconds: the page may be reloaded often, the HSM check need not run each time


class PageComponent:
    """Mounts ``/`` and ``/status.json`` on the public listener."""

    name = "page"

    def __init__(self) -> None:
        self._readiness: tuple[float, dict[str, str]] = (0.0, {})

    async def start(self, service: Service) -> None:
        self.service = service
        service.app.router.add_get("/", self._page)
        service.app.router.add_get("/status.json", self._json)

    async def stop(self) -> None:
        return None

    async def data(self) -> dict[str, Any]:
        now = time.time()
        if now - self._readiness[0] > READINESS_CACHE:
            self._readiness = (now, await self.service.readiness())
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, overview, self.service.config, self.service.registry, now)
        for part, text in self._readiness[1].items():
            problem = {"part": part, "text": text}
            if problem not in data["health"]["problems"]:
                data["health"]["problems"].append(problem)
        data["health"]["ok"] = not data["health"]["problems"]
        return data

    async def _json(self, request: web.Request) -> web.Response:
        return web.json_response(await self.data(), headers={"Cache-Control": "no-cache"})

    async def _page(self, request: web.Request) -> web.Response:
        body = render(await self.data())
        return web.Response(text=body, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS)


def _when(epoch: int | None) -> str:
    if epoch is None:
        return "never"
    text = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f'<time datetime="{datetime.fromtimestamp(epoch, UTC).isoformat()}">{text}</time>'


def _relative(epoch: int, now: int) -> str:
    delta = epoch - now
    return f"in {age_in_words(delta)}" if delta >= 0 else f"{age_in_words(-delta)} ago"


def render(data: dict[str, Any]) -> str:
    now = data["generated_at"]
    out = ['<!doctype html><html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>Certificate publication: CA certificates, CRLs, OCSP, directory</title>",
           f"<style>{STYLE}</style></head><body>",
           "<header><h1>Certificate publication</h1>",
           "<p>CA certificates, certificate revocation lists (CRLs), OCSP responder and directory of this "
           "certification authority.</p></header><main>"]
    health = data["health"]
    if health["ok"]:
        out.append('<section class="health ok" aria-labelledby="health"><h2 id="health">Health</h2>'
                   '<p class="state-ok">All publication channels are up to date.</p></section>')
    else:
        items = "".join(f"<li><strong>{escape(p['part'])}</strong>: {escape(p['text'])}</li>"
                        for p in health["problems"])
        out.append('<section class="health bad" aria-labelledby="health"><h2 id="health">Health</h2>'
                   f'<p class="state-bad">Attention needed:</p><ul>{items}</ul></section>')
    out.append('<nav aria-label="Certification authorities"><ul>'
               + "".join(f'<li><a href="#ca-{escape(i["name"])}">{escape(i["common_name"])}</a></li>'
                         for i in data["issuers"]) + "</ul></nav>")
    for issuer in data["issuers"]:
        out.append(_issuer(issuer, now))
    if data["directory"] is not None:
        out.append(_directory(data["directory"], now))
    out.append(f"</main><footer><p>Page generated {_when(now)}. The same data as JSON: "
               '<a href="/status.json">status.json</a>.</p></footer></body></html>')
    return "".join(out)


def _issuer(issuer: dict[str, Any], now: int) -> str:
    name = escape(issuer["name"])
    counts = issuer["counts"]
    parts = [f'<section aria-labelledby="ca-{name}"><h2 id="ca-{name}">{escape(issuer["common_name"])}</h2>',
             f'<dl><dt>Subject</dt><dd class="subject"><code>{escape(issuer["subject"])}</code></dd>',
             f'<dt>CA certificate</dt><dd><a href="{_local(issuer["certificate_url"])}" '
             f'download="{name}.crt">{name}.crt</a> (DER), valid until {_when(issuer["not_after"])}</dd>',
             f'<dt>SHA-256 fingerprint</dt><dd class="sha256"><code>{_fingerprint(issuer["sha256"])}</code></dd>',
             f'<dt>SHA-1 fingerprint</dt><dd><code>{_fingerprint(issuer["sha1"])}</code></dd>']
    if issuer["ocsp_url"]:
        parts.append(f'<dt>OCSP responder</dt><dd><code>{escape(issuer["ocsp_url"])}</code> '
                     "(RFC 6960, GET and POST)</dd>")
    else:
        parts.append("<dt>OCSP responder</dt><dd>none for this CA: use its CRL</dd>")
    parts.append(f"<dt>Certificates</dt><dd>{counts['good']} valid, {counts['revoked']} revoked, "
                 f"{counts['on-hold']} suspended</dd></dl>")
    rows = []
    for crl in issuer["crls"]:
        label = {"full": "full", "delta": "delta"}[crl["kind"]]
        if crl["scope"] != "main":
            label = f"partition {escape(crl['scope'][1:])}"
        link = (f'<a href="{_local(crl["url"])}" title="{escape(crl["url"])}">'
                f'{escape(crl["url"].rsplit("/", 1)[-1])}</a>')
        if not crl["published"]:
            rows.append(f"<tr><th scope=\"row\">{label}</th><td>{link}</td>"
                        '<td colspan="5" class="state-bad">not published yet</td></tr>')
            continue
        number = str(crl["number"]) + (f" (base {crl['base_number']})" if crl.get("base_number") else "")
        state = ('<span class="state-bad">expired</span>' if crl["expired"]
                 else _relative(crl["next_update"], now))
        rows.append(f'<tr><th scope="row">{label}</th><td>{link}</td><td>{escape(number)}</td>'
                    f"<td>{_when(crl['this_update'])}<br>{age_in_words(crl['age_seconds'])} ago</td>"
                    f"<td>{_when(crl['next_update'])}<br>{state}</td>"
                    f"<td>{crl['entries']}</td><td>{size_in_words(crl['size'])}</td></tr>")
    parts.append('<div class="scroll"><table><caption>Certificate revocation lists</caption><thead><tr>'
                 '<th scope="col">CRL</th><th scope="col">Download</th><th scope="col">Number</th>'
                 '<th scope="col">Published (thisUpdate)</th><th scope="col">Next update</th>'
                 '<th scope="col">Entries</th><th scope="col">Size</th></tr></thead><tbody>'
                 + "".join(rows) + "</tbody></table></div></section>")
    return "".join(parts)


def _directory(d: dict[str, Any], now: int) -> str:
    def since(epoch: int | None) -> str:
        return f"{_when(epoch)} ({age_in_words(now - epoch)} ago)" if epoch else "never"

    error = (f'<span class="state-bad">failing ({d["failures"]} attempts): {escape(d["last_error"] or "")}</span>'
             if d["failures"] else '<span class="state-ok">reachable</span>')
    verify = ("not run yet" if d["last_verify"] is None
              else f"{since(d['last_verify'])}: {d['last_verify_drift']} differences found")
    urls = ", ".join(f"<code>{escape(u)}</code>" for u in d["urls"])
    return ('<section aria-labelledby="directory"><h2 id="directory">Directory (LDAP)</h2><dl>'
            f"<dt>Servers</dt><dd>{urls}, base <code>{escape(d['suffix'])}</code></dd>"
            f"<dt>State</dt><dd>{error}</dd>"
            f"<dt>Last full synchronisation</dt><dd>{since(d['last_full'])}"
            + (f", {d['last_full_repaired']} differences repaired" if d["last_full_repaired"] else "") + "</dd>"
            f"<dt>Last change applied</dt><dd>{since(d['last_incremental'])}</dd>"
            f"<dt>Changes waiting</dt><dd>{d['outbox_depth']}"
            + (f" (oldest {age_in_words(d['lag_seconds'])})" if d["outbox_depth"] else "") + "</dd>"
            + _refusals(d) +
            f"<dt>Last verification</dt><dd>{verify}</dd></dl></section>")


def _refusals(d: dict[str, Any]) -> str:
    """The writes the directory refused (kept in the outbox, retried), the oldest few with their reason."""
    if not d.get("refused"):
        return ""
    items = "".join(f"<li><code>{escape(r['dn'] or r['issuer'])}</code>: {escape(r['reason'])} "
                    f"({r['attempts']} attempts)</li>" for r in d.get("refusals", []))
    return (f'<dt>Writes refused</dt><dd><span class="state-bad">{d["refused"]} refused by the directory, '
            f"kept and retried</span><ul>{items}</ul></dd>")


def _local(url: str) -> str:
    """The path of a published URL: the page links to this very service, whatever host name it was
    reached by (behind a proxy, or on a node whose base URL names the load balancer)."""
    path = "/" + url.split("://", 1)[-1].split("/", 1)[-1]
    return escape(path)


def _fingerprint(hex_digest: str) -> str:
    return ":".join(hex_digest[i:i + 2] for i in range(0, len(hex_digest), 2)).upper()
