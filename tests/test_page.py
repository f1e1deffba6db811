"""The public publication page in a real headless browser (Debian chromium driven through chromedriver):
it loads with no console error (the CSP holds), in French by default and in English on request, shows the
demo CAs with absolute UTC dates beside relative ones, their certification policies and OCSP responder
certificates, and its links download what they say; it shows no internal operations data (that is on the
admin listener's operator view); it fits a phone's width; screenshots are kept in var/test-artifacts/."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By

from directory.certinfo import subject_text
from directory.config import load_config
from directory.ops.i18n import choose
from tests.conftest import ROOT, run_cli
from tests.served import http, serve

ARTIFACTS = ROOT / "var" / "test-artifacts"
UTC_AND_RELATIVE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")
INTERNAL = ("outbox", "Changes waiting", "Last full", "synchronisation", "verify", "dead letter", "refused",
            "Modifications en attente", "checker", "readiness")


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver are installed by `make test`"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"intl.accept_languages": "fr-FR,fr"})  # a French browser
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=DriverService(driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def test_publication_page_in_a_browser(demo: Path, browser: webdriver.Chrome) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    token = (demo.parent / "secrets" / "admin-token").read_text().strip()
    with serve(demo) as served:
        deadline = time.monotonic() + 30  # the directory's first pass: then the page is all green
        while not json.loads(http(served.base + "/status.json")[2])["health"]["ok"]:
            assert time.monotonic() < deadline, http(served.base + "/status.json")[2]
            time.sleep(0.3)
        status, headers, _ = http(served.base + "/")
        assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Content-Language"] == "fr"
        assert headers["Vary"] == "Accept-Language"
        for accept, lang in (("en-GB,en;q=0.9,fr;q=0.5", "en"), ("fr-CA,en;q=0.8", "fr"), ("de-DE,de", "fr"),
                             ("en;q=0.2,fr;q=0.1", "en"), ("*", "fr"), ("x" * 2000, "fr")):
            assert http(served.base + "/", headers={"Accept-Language": accept})[1]["Content-Language"] == lang, accept

        # French by default
        browser.set_window_size(1280, 1600)
        browser.get(served.base + "/")
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "fr"
        assert "Point de publication" in browser.title
        health = browser.find_element(By.CSS_SELECTOR, "section.health").text
        assert "Tous les canaux de publication sont à jour." in health
        headings = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "main h2")]
        config = load_config(demo)
        for issuer in config.issuers:
            cn = issuer.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            assert cn in headings, (cn, headings)
        assert "Annuaire (LDAP)" in headings
        text = browser.find_element(By.TAG_NAME, "main").text
        for word in INTERNAL:
            assert word.lower() not in text.lower(), word  # internal operations data is on the operator view
        validity = browser.find_element(By.CSS_SELECTOR, "dd.ca-certificate").text
        assert "valide jusqu'au" in validity and UTC_AND_RELATIVE.search(validity) and "(dans " in validity
        browser.save_screenshot(str(ARTIFACTS / "publication-page.png"))

        # every CRL link downloads a CRL of that CA with the number the page shows, dated both ways
        rows = browser.find_elements(By.CSS_SELECTOR, "section table tbody tr")
        seen = 0
        for row in rows:
            link = row.find_element(By.TAG_NAME, "a")
            href = link.get_attribute("href")
            assert href and href.startswith(served.base + "/crl/"), href  # base_url is rewritten: same host
            status, _, body = http(href)
            assert status == 200, href
            crl = x509.load_der_x509_crl(body)
            cells = row.find_elements(By.TAG_NAME, "td")
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            assert number == int(cells[1].text.split()[0])
            section = row.find_element(By.XPATH, "ancestor::section")
            assert subject_text(crl.issuer) == section.find_element(By.CSS_SELECTOR, "dd.subject").text
            assert len(list(crl)) == int(cells[4].text)
            published = cells[2].text
            assert UTC_AND_RELATIVE.search(published) and "il y a" in published, published
            assert published.split(" UTC")[0] == crl.last_update_utc.strftime("%Y-%m-%d %H:%M:%S")
            assert UTC_AND_RELATIVE.search(cells[3].text) and "dans" in cells[3].text
            seen += 1
        assert seen >= 4  # three full CRLs and the delta of ac-personnes

        for section in browser.find_elements(By.CSS_SELECTOR, "main section[aria-labelledby^='ca-']"):
            name = section.get_attribute("aria-labelledby").removeprefix("ca-")
            issuer = config.issuer(name)
            # the CA certificate link downloads the certificate whose fingerprint and subject are shown
            status, _, body = http(section.find_element(By.CSS_SELECTOR, "dd.ca-certificate a").get_attribute("href"))
            assert status == 200
            cert = x509.load_der_x509_certificate(body)
            assert hashlib.sha256(body).hexdigest() == section.find_element(
                By.CSS_SELECTOR, "dd.sha256").text.replace(":", "").lower()
            assert subject_text(cert.subject) == section.find_element(By.CSS_SELECTOR, "dd.subject").text
            # its certification policies: each link gives the document the configuration names
            links = section.find_elements(By.CSS_SELECTOR, "dd.policies a")
            assert len(links) == len(issuer.policies) >= 1
            for link, doc in zip(links, issuer.policies, strict=True):
                assert link.text == doc.title
                status, headers, body = http(link.get_attribute("href"))
                assert status == 200 and headers["Content-Type"].startswith("text/plain"), headers
                assert doc.file is not None and body == doc.file.read_bytes()
                assert "Politique de certification" in body.decode()
            # the OCSP responder's certificate: downloadable, for OCSP signing, issued by this CA, as shown
            signers = section.find_elements(By.CSS_SELECTOR, "dd.ocsp-signer")
            assert len(signers) == (1 if issuer.ocsp is not None else 0)
            for signer in signers:
                status, headers, body = http(signer.find_element(By.TAG_NAME, "a").get_attribute("href"))
                assert status == 200 and headers["Content-Type"] == "application/pkix-cert"
                responder = x509.load_der_x509_certificate(body)
                responder.verify_directly_issued_by(cert)
                eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
                assert ExtendedKeyUsageOID.OCSP_SIGNING in eku
                assert responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
                assert signer.find_element(By.CSS_SELECTOR, "code.subject").text == subject_text(responder.subject)
                assert signer.find_element(By.CSS_SELECTOR, "code.sha256").text.replace(":", "").lower() == \
                    hashlib.sha256(body).hexdigest()
                assert UTC_AND_RELATIVE.search(signer.text)

        # English, from the page's own link
        browser.find_element(By.CSS_SELECTOR, "a.language").click()
        assert browser.current_url.endswith("/?lang=en")
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
        assert "Publication point" in browser.title
        health = browser.find_element(By.CSS_SELECTOR, "section.health").text
        assert "All publication channels are up to date." in health
        english = browser.find_element(By.TAG_NAME, "main").text
        assert "Certification policies" in english and "OCSP responder certificate" in english
        assert "valid until" in english and " ago" in english
        browser.save_screenshot(str(ARTIFACTS / "publication-page-en.png"))

        # a phone: one column, nothing wider than the screen but the tables' own scroll boxes
        browser.set_window_size(390, 844)
        browser.get(served.base + "/")
        widths = browser.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], widths
        browser.save_screenshot(str(ARTIFACTS / "publication-page-phone.png"))

        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors  # a CSP violation (the inline style) would be reported here

        # /status.json: the public fields only; the operations data is on the admin listener, authenticated
        public = json.loads(http(served.base + "/status.json")[2])
        assert set(public) == {"generated_at", "base_url", "issuers", "directory", "health"}
        assert set(public["directory"]) == {"urls", "suffix"}
        assert {p["name"] for p in public["issuers"]} == {i.name for i in config.issuers}
        assert http(served.admin + "/api/v1/operations")[0] == 401 and http(served.admin + "/ops")[0] == 401
        auth = {"Authorization": f"Bearer {token}"}
        status, _, body = http(served.admin + "/api/v1/operations", headers=auth)
        operations = json.loads(body)
        assert status == 200 and operations["directory"]["outbox_depth"] == 0
        assert operations["directory"]["last_full"] and operations["readiness"]["ready"]
        assert isinstance(operations["checks"], list) and operations["health"]["ok"]  # reports: every [check] interval
        status, headers, body = http(served.admin + "/ops", headers=auth)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b"Changes waiting (outbox)" in body and b"Publication checks" in body

        # subjects with attribute names, as openssl prints them, in the admin API too
        manifest = json.loads((demo.parent / "certs" / "manifest.json").read_text())
        person = next(m for m in manifest if m["issuer"] == "ac-personnes")
        status, _, body = http(f"{served.admin}/api/v1/certificates/ac-personnes/{person['serial_hex']}",
                               headers=auth)
        subject = json.loads(body)["subject"]
        assert status == 200 and subject == _openssl_subject(demo.parent / "certs" / person["file"]), subject
        assert "SN=" in subject and "GN=" in subject and "2.5.4." not in subject


def _openssl_subject(pem: Path) -> str:
    """The subject as `openssl x509 -nameopt RFC2253` prints it (UTF-8 as is)."""
    out = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253,-esc_msb", "-in", str(pem)],
                         capture_output=True, text=True, check=True).stdout.strip()
    return out.removeprefix("subject=")


def test_subjects_have_attribute_names_in_show(demo: Path) -> None:
    """`annuaire show` prints subjects with attribute names (as openssl does), rows imported before this
    rule included (their stored text is read with the names)."""
    import sqlite3

    manifest = json.loads((demo.parent / "certs" / "manifest.json").read_text())
    person = next(m for m in manifest if m["issuer"] == "ac-personnes")
    expected = _openssl_subject(demo.parent / "certs" / person["file"])
    show = json.loads(run_cli("show", "-c", str(demo), "--issuer", "ac-personnes", "--serial", person["serial_hex"],
                              "--json", check=True).stdout)
    assert show["subject"] == expected and "SN=" in expected and "title=" in expected
    legacy = x509.load_pem_x509_certificate((demo.parent / "certs" / person["file"]).read_bytes()).subject
    with sqlite3.connect(demo.parent / "data" / "registry.sqlite3") as db:  # a row as older versions stored it
        db.execute("UPDATE certificates SET subject_dn = ? WHERE serial_hex = ?",
                   (legacy.rfc4514_string(), person["serial_hex"]))
    assert "2.5.4.4=" in legacy.rfc4514_string()
    human = run_cli("show", "-c", str(demo), "--issuer", "ac-personnes", "--serial", person["serial_hex"], check=True)
    assert f"subject          {expected}" in human.stdout


def test_language_negotiation() -> None:
    assert choose(None, None) == "fr" and choose("en", "fr") == "en" and choose("fr", "en") == "fr"
    assert choose("de", "en-US,en;q=0.9") == "en"  # an unknown ?lang= is ignored
    assert choose(None, "en;q=0.5, fr;q=0.8") == "fr" and choose(None, "en, fr") == "en"
    assert choose(None, "fr;q=0, en;q=0.1") == "en" and choose(None, "en;q=2") == "fr"  # q above 1: malformed
    assert choose(None, "en-US;q=0.7;x=y") == "fr" and choose(None, ",,,en") == "en"


def test_page_stays_true_while_crls_are_rebuilt(demo: Path) -> None:
    """CRLs rebuilt over and over by another process: every page shows published, unexpired CRLs whose
    served file is that one or a newer one, never a half-written state."""
    import subprocess
    import sys
    import threading

    with serve(demo) as served:
        stop = threading.Event()

        def rebuild() -> None:
            while not stop.is_set():
                subprocess.run([sys.executable, "-m", "directory.cli", "crl", "build", "-c", str(demo)],
                               capture_output=True, cwd=ROOT)

        builder = threading.Thread(target=rebuild)
        builder.start()
        try:
            pages = 0
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                status, _, page = http(served.base + "/")
                assert status == 200 and b"not published" not in page and b"expired" not in page
                data = json.loads(http(served.base + "/status.json")[2])
                for issuer in data["issuers"]:
                    for crl in issuer["crls"]:
                        assert crl["published"] and not crl["expired"], crl
                        path = "/crl/" + crl["url"].rsplit("/", 1)[-1]
                        served_crl = x509.load_der_x509_crl(http(served.base + path)[2])
                        number = served_crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
                        assert number >= crl["number"], (path, number, crl["number"])
                pages += 1
        finally:
            stop.set()
            builder.join()
        assert pages >= 5
        final = json.loads(http(served.base + "/status.json")[2])
        assert max(c["number"] for i in final["issuers"] for c in i["crls"]) > 3  # rebuilt meanwhile
