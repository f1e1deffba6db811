"""The public publication page's HTML, in French or English (``i18n``), and what the operator page shares.

Server-rendered, no script, no external asset (the stylesheet is inline and allowed by its hash in the
Content-Security-Policy), tables with captions and header scopes, a single column on a phone. Every date
is given as an absolute UTC time beside how long ago or ahead it is. Links to this service's own files are
made relative to the host the page was reached by (behind a proxy, or on a node whose base URL names a
balancer).
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from html import escape
from typing import Any

from directory.ops.i18n import relative, size, text, utc

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
dd ul{margin:0;padding-left:1.2rem}
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


def when(epoch: float | None, now: float, lang: str) -> str:
    """``<time>2026-12-06 17:00:00 UTC</time> (dans 3 jours)``; ``jamais`` / ``never`` for None."""
    if epoch is None:
        return text("never", lang)
    return f"{stamp(epoch)} ({relative(epoch, now, lang)})"


def stamp(epoch: float) -> str:
    """An absolute UTC time as a ``<time>`` element."""
    return f'<time datetime="{datetime.fromtimestamp(epoch, UTC).isoformat()}">{utc(epoch)}</time>'


def local(url: str) -> str:
    """The path of one of this service's published URLs (the page links to the host it was reached by)."""
    return escape("/" + url.split("://", 1)[-1].split("/", 1)[-1])


def fingerprint(hex_digest: str) -> str:
    return ":".join(hex_digest[i:i + 2] for i in range(0, len(hex_digest), 2)).upper()


def render(data: dict[str, Any], lang: str) -> str:
    """The public page (``public.public_view``'s data) in ``lang``."""
    now = data["generated_at"]
    other = "en" if lang == "fr" else "fr"
    out = [f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{escape(text('title', lang))}</title>",
           f'<link rel="alternate" hreflang="{other}" href="/?lang={other}">',
           f"<style>{STYLE}</style></head><body>",
           f"<header><h1>{escape(text('heading', lang))}</h1><p>{escape(text('intro', lang))}</p>",
           f'<p><a class="language" href="/?lang={other}" hreflang="{other}" lang="{other}">'
           f"{escape(text('other_language', lang))}</a></p></header><main>"]
    out.append(_health(data["health"], lang))
    out.append(f'<nav aria-label="{escape(text("cas", lang))}"><ul>'
               + "".join(f'<li><a href="#ca-{escape(i["name"])}">{escape(i["common_name"])}</a></li>'
                         for i in data["issuers"]) + "</ul></nav>")
    out += [_issuer(issuer, now, lang) for issuer in data["issuers"]]
    if data["directory"] is not None:
        out.append(_directory(data["directory"], lang))
    out.append(f"</main><footer><p>{text('generated', lang, when=stamp(now))} "
               '<a href="/status.json">status.json</a>.</p></footer></body></html>')
    return "".join(out)


def _health(health: dict[str, Any], lang: str) -> str:
    title = escape(text("health", lang))
    if health["ok"]:
        return (f'<section class="health ok" aria-labelledby="health"><h2 id="health">{title}</h2>'
                f'<p class="state-ok">{escape(text("all_good", lang))}</p></section>')
    items = "".join(f"<li>{escape(text(p['code'], lang, file=p.get('file', '')))}</li>" for p in health["problems"])
    return (f'<section class="health bad" aria-labelledby="health"><h2 id="health">{title}</h2>'
            f'<p class="state-bad">{escape(text("attention", lang))}</p><ul>{items}</ul></section>')


def _row(term: str, value: str, css: str = "") -> str:
    """One ``<dt>``/``<dd>`` pair (``term`` already escaped, ``value`` HTML)."""
    attribute = f' class="{css}"' if css else ""
    return f"<dt>{term}</dt><dd{attribute}>{value}</dd>"


def _issuer(issuer: dict[str, Any], now: int, lang: str) -> str:
    name = escape(issuer["name"])
    counts = issuer["counts"]

    def t(key: str, **values: object) -> str:
        return escape(text(key, lang, **values))

    download = (f'<a href="{local(issuer["certificate_url"])}" download="{name}.crt">{name}.crt</a> (DER), '
                f'{t("valid_until")} {when(issuer["not_after"], now, lang)}')
    rows = [_row(t("subject"), f'<code>{escape(issuer["subject"])}</code>', "subject"),
            _row(t("ca_certificate"), download, "ca-certificate"),
            _row(t("fingerprint", alg="SHA-256"), f'<code>{fingerprint(issuer["sha256"])}</code>', "sha256"),
            _row(t("fingerprint", alg="SHA-1"), f'<code>{fingerprint(issuer["sha1"])}</code>'),
            _row(t("policies"), _policies(issuer["policies"], lang), "policies")]
    if issuer["ocsp_url"]:
        rows.append(_row(t("ocsp"), f'<code>{escape(issuer["ocsp_url"])}</code> {t("ocsp_methods")}'))
        signer = issuer.get("ocsp_signer")
        if signer is not None:
            rows.append(_row(t("ocsp_signer"), (
                f'<a href="{local(signer["certificate_url"])}" download="{name}-ocsp.crt">{name}-ocsp.crt</a> (DER), '
                f'<code class="subject">{escape(signer["subject"])}</code>, {t("valid_until")} '
                f'{when(signer["not_after"], now, lang)}, SHA-256 <code class="sha256">'
                f'{fingerprint(signer["sha256"])}</code>'), "ocsp-signer"))
        else:
            rows.append(_row(t("ocsp_signer"), t("ocsp_signer_ca")))
    else:
        rows.append(_row(t("ocsp"), t("ocsp_none")))
    rows.append(_row(t("certificates"), t("counts", good=counts["good"], revoked=counts["revoked"],
                                          held=counts["on-hold"])))
    return (f'<section aria-labelledby="ca-{name}"><h2 id="ca-{name}">{escape(issuer["common_name"])}</h2>'
            f'<dl>{"".join(rows)}</dl>{_crls(issuer["crls"], now, lang)}</section>')


def _policies(policies: list[dict[str, Any]], lang: str) -> str:
    if not policies:
        return escape(text("no_policies", lang))
    items = []
    for p in policies:
        href = local(p["url"]) if p.get("served") else escape(p["url"])
        oid = f" (OID <code>{escape(p['oid'])}</code>)" if p.get("oid") else ""
        items.append(f'<li><a href="{href}">{escape(p["title"])}</a>{oid}</li>')
    return "<ul>" + "".join(items) + "</ul>"


def _crls(crls: list[dict[str, Any]], now: int, lang: str) -> str:
    def t(key: str, **values: object) -> str:
        return escape(text(key, lang, **values))

    rows = []
    for crl in crls:
        label = t("full") if crl["kind"] == "full" else t("delta")
        if crl["scope"] != "main":
            label = t("partition", n=crl["scope"][1:])
        file = escape(crl["url"].rsplit("/", 1)[-1])
        link = f'<a href="{local(crl["url"])}" title="{escape(crl["url"])}">{file}</a>'
        if not crl["published"]:
            rows.append(f'<tr><th scope="row">{label}</th><td>{link}</td>'
                        f'<td colspan="5" class="state-bad">{t("not_published")}</td></tr>')
            continue
        number = str(crl["number"]) + (f" (base {crl['base_number']})" if crl.get("base_number") else "")
        state = (f'<span class="state-bad">{t("expired")}</span> ' if crl["expired"] else "")
        rows.append(f'<tr><th scope="row">{label}</th><td>{link}</td><td>{escape(number)}</td>'
                    f"<td>{_two_lines(crl['this_update'], now, lang)}</td>"
                    f"<td>{state}{_two_lines(crl['next_update'], now, lang)}</td>"
                    f"<td>{crl['entries']}</td><td>{escape(size(crl['size'], lang))}</td></tr>")
    head = "".join(f'<th scope="col">{t(k)}</th>' for k in ("crl", "download", "number", "published", "next_update",
                                                             "entries", "size"))
    return (f'<div class="scroll"><table><caption>{t("crls")}</caption><thead><tr>{head}</tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></div>")


def _two_lines(epoch: int, now: int, lang: str) -> str:
    return f"{stamp(epoch)}<br>{escape(relative(epoch, now, lang))}"


def _directory(d: dict[str, Any], lang: str) -> str:
    urls = ", ".join(f"<code>{escape(u)}</code>" for u in d["urls"])
    return (f'<section aria-labelledby="directory"><h2 id="directory">{escape(text("directory", lang))}</h2><dl>'
            f"<dt>{escape(text('servers', lang))}</dt><dd>{urls}, {escape(text('base', lang))} "
            f"<code>{escape(d['suffix'])}</code></dd></dl><p>{escape(text('anonymous', lang))}</p></section>")
