"""Certification policies (`[[issuers.policies]]`): what the configuration accepts, and how the publication
point serves the documents and the OCSP responder certificates (real HTTP, the component's own routes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509

from directory.config import ConfigError, load_config
from directory.ops.documents import PublicDocuments

POLICY = '\n[[issuers.policies]]\ntitle = "PC"\n'


def _with(config: Path, issuer: str, table: str) -> None:
    """Add a policies table to one issuer (after its [[issuers]] header and plain keys)."""
    text = config.read_text()
    header = f'[[issuers]]\nname = "{issuer}"\n'
    start = text.index(header)
    end = text.find("\n[[issuers]]", start + 1)
    end = len(text) if end < 0 else end
    config.write_text(text[:end].rstrip("\n") + "\n" + table + text[end:])


@pytest.mark.parametrize(("table", "problem"), [
    (POLICY, "exactly one of url"),
    (POLICY + 'url = "https://x/pc.pdf"\nfile = "pc/pc-ac-racine.txt"\n', "exactly one of url"),
    (POLICY + 'url = "javascript:alert(1)"\n', "must be an http:// or https:// URL"),
    (POLICY + 'url = "https://x/a b.pdf"\n', "must be an http:// or https:// URL"),
    (POLICY + 'file = "pc/missing.pdf"\n', "cannot read"),
    (POLICY + 'file = "annuaire.toml"\n', "a policy document is named"),
    (POLICY + 'file = "pc"\n', "a policy document is named"),
    (POLICY + 'url = "https://x/pc.pdf"\noid = "1.2.x"\n', "not a dotted object identifier"),
    ('\n[[issuers.policies]]\ntitle = ""\nurl = "https://x/pc.pdf"\n', "1 to 200 printable characters"),
    (POLICY + 'url = "https://x/pc.pdf"\nlang = "fr"\n', "unknown key"),
])
def test_policies_are_checked(demo: Path, table: str, problem: str) -> None:
    _with(demo, "ac-personnes", table)
    with pytest.raises(ConfigError, match=problem):
        load_config(demo)


def test_two_documents_under_one_name_are_refused(demo: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "pc-ac-racine.txt").write_text("another document\n")
    _with(demo, "ac-personnes", POLICY + f'file = "{other / "pc-ac-racine.txt"}"\n')
    with pytest.raises(ConfigError, match=r"two documents are named 'pc-ac-racine\.txt'"):
        load_config(demo)


async def test_documents_and_responder_certificates_are_served_by_name_only(demo: Path) -> None:
    (demo.parent / "pc" / "dpc.html").write_text("<h1>DPC</h1><script>alert(1)</script>")
    _with(demo, "ac-structures", '\n[[issuers.policies]]\ntitle = "DPC"\nfile = "pc/dpc.html"\n')
    config = load_config(demo)
    app = web.Application()
    PublicDocuments(config).add_routes(app)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/pc/dpc.html")
        assert response.status == 200 and response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["Content-Security-Policy"].startswith("sandbox")  # no script of theirs on our origin
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        etag = response.headers["ETag"]
        assert (await client.get("/pc/dpc.html", headers={"If-None-Match": etag})).status == 304
        text = await (await client.get("/pc/pc-ac-racine.txt")).text()
        assert text == (demo.parent / "pc" / "pc-ac-racine.txt").read_text()
        for path in ("/pc/annuaire.toml", "/pc/..%2Fannuaire.toml", "/pc/%2e%2e/annuaire.toml", "/pc/",
                     "/pc/PC-AC-RACINE.TXT", "/ca/ac-racine/ocsp.crt", "/ca/nope/ocsp.crt", "/ca/..%2Fpc/ocsp.crt"):
            assert (await client.get(path)).status == 404, path
        response = await client.get("/ca/ac-personnes/ocsp.crt")
        assert response.status == 200 and response.headers["Content-Type"] == "application/pkix-cert"
        signer = x509.load_der_x509_certificate(await response.read())
        assert signer == config.issuer("ac-personnes").ocsp.signer_certificate  # type: ignore[union-attr]
