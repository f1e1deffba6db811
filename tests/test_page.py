"""The public publication page in a real headless browser (Debian chromium driven through chromedriver):
it loads with no console error (the CSP holds), shows the demo CAs, its links download what they say,
it fits a phone's width; screenshots are kept in var/test-artifacts/."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By

from directory.config import load_config
from tests.conftest import ROOT
from tests.served import http, serve

ARTIFACTS = ROOT / "var" / "test-artifacts"


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
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=DriverService(driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def test_publication_page_in_a_browser(demo: Path, browser: webdriver.Chrome) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with serve(demo) as served:
        deadline = time.monotonic() + 30  # the directory's first pass: then the page is all green
        while not json.loads(http(served.base + "/status.json")[2])["health"]["ok"]:
            assert time.monotonic() < deadline, http(served.base + "/status.json")[2]
            time.sleep(0.3)
        status, headers, _ = http(served.base + "/")
        assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"

        browser.set_window_size(1280, 1600)
        browser.get(served.base + "/")
        assert "Certificate publication" in browser.title
        health = browser.find_element(By.CSS_SELECTOR, "section.health").text
        assert "All publication channels are up to date" in health
        headings = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "main h2")]
        for issuer in load_config(demo).issuers:
            cn = issuer.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            assert cn in headings, (cn, headings)
        assert "Directory (LDAP)" in headings
        browser.save_screenshot(str(ARTIFACTS / "publication-page.png"))

        # every CRL link downloads a CRL of that CA with the number the page shows
        rows = browser.find_elements(By.CSS_SELECTOR, "section table tbody tr")
        seen = 0
        for row in rows:
            link = row.find_element(By.TAG_NAME, "a")
            href = link.get_attribute("href")
            assert href and href.startswith(served.base + "/crl/"), href  # base_url is rewritten: same host
            status, _, body = http(href)
            assert status == 200, href
            crl = x509.load_der_x509_crl(body)
            shown_number = row.find_elements(By.TAG_NAME, "td")[1].text.split()[0]
            assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == int(shown_number)
            section = row.find_element(By.XPATH, "ancestor::section")
            assert crl.issuer.rfc4514_string() == section.find_element(By.CSS_SELECTOR, "dd.subject").text
            shown_entries = int(row.find_elements(By.TAG_NAME, "td")[4].text)
            assert len(list(crl)) == shown_entries
            seen += 1
        assert seen >= 4  # three full CRLs and the delta of ac-personnes

        # every CA certificate link downloads the certificate whose fingerprint is shown beside it
        for section in browser.find_elements(By.CSS_SELECTOR, "main section[aria-labelledby^='ca-']"):
            link = section.find_element(By.CSS_SELECTOR, "a[download]")
            status, _, body = http(link.get_attribute("href") or "")
            assert status == 200
            cert = x509.load_der_x509_certificate(body)
            shown = section.find_element(By.CSS_SELECTOR, "dd.sha256").text.replace(":", "").lower()
            assert hashlib.sha256(body).hexdigest() == shown
            assert cert.subject.rfc4514_string() == section.find_element(By.CSS_SELECTOR, "dd.subject").text

        # a phone: one column, nothing wider than the screen but the tables' own scroll boxes
        browser.set_window_size(390, 844)
        browser.get(served.base + "/")
        widths = browser.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], widths
        browser.save_screenshot(str(ARTIFACTS / "publication-page-phone.png"))

        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors  # a CSP violation (the inline style) would be reported here


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
