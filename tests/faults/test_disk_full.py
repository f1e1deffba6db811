"""The CRL directory fills up (a small tmpfs mounted over it) while a CRL is written: the build fails with
the reason, the previous CRL stays in place intact, no temporary file is left, and the next build after
space comes back publishes a higher number. Needs root for `mount` (CI runs as root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from tests.conftest import run_cli
from tests.test_crl import _bulk_revoked

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")


def _number(path: Path) -> int:
    crl = x509.load_der_x509_crl(path.read_bytes())
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_disk_full_while_writing_a_crl(demo: Path, tmp_path: Path) -> None:
    demo_dir = demo.parent
    run_cli("crl", "build", "-c", str(demo), "--issuer", "ac-personnes", check=True)
    crl_dir = demo_dir / "data" / "crl"
    saved = tmp_path / "saved"
    shutil.copytree(crl_dir, saved)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k,mode=0700", "tmpfs", str(crl_dir)], check=True)
    try:
        shutil.copytree(saved, crl_dir, dirs_exist_ok=True)
        live = crl_dir / "ac-personnes.crl"
        before, number_before = live.read_bytes(), _number(live)
        _bulk_revoked(demo_dir / "data" / "registry.sqlite3", "ac-personnes", 4000)  # a CRL of ~150 KB
        result = run_cli("crl", "build", "-c", str(demo), "--issuer", "ac-personnes", "--json")
        assert result.returncode == 1
        assert "No space left on device" in result.stderr, result.stderr
        assert live.read_bytes() == before  # the previous CRL, untouched and whole
        verified = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(live), "-noout", "-CAfile",
                                   str(demo_dir / "ca" / "ac-personnes.pem")], capture_output=True, text=True)
        assert "verify OK" in verified.stdout + verified.stderr
        assert not [p.name for p in crl_dir.iterdir() if p.name.endswith(".tmp")], "temporary files left behind"
        # space comes back: the next build publishes, with a number above the failed one
        subprocess.run(["mount", "-o", "remount,size=4m", str(crl_dir)], check=True)
        built = json.loads(run_cli("crl", "build", "-c", str(demo), "--issuer", "ac-personnes", "--json",
                                   check=True).stdout)
        full = next(b for b in built if b["kind"] == "full")
        assert full["entries"] >= 4000 and full["number"] > number_before + 1  # the failed one burnt its number
        assert _number(live) == full["number"]
    finally:
        subprocess.run(["umount", str(crl_dir)], check=False)
