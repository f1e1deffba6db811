"""The wheel works outside the checkout: built from the tree, installed into a fresh venv in a temporary
folder, it builds a demo and serves it with the managed slapd (schema and templates from the installed
package, not from the repository) until /readyz says ready; every command runs from outside the checkout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

from tests.conftest import ROOT, free_port
from tests.served import http

SHIPPED = ["schema/health.schema", "schema/health.ldif", "slapd/provider.conf", "slapd/olc/provider.ldif",
           "slapd/seed.ldif", "slapd/replication/multi-provider.conf", "slapd/replication/consumer.conf",
           "slapd/replication/olc/multi-provider.ldif", "slapd/replication/olc/consumer.ldif"]


def _wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, cwd=out)
    (wheel,) = out.glob("annuaire-*.whl")
    return wheel


def _venv(where: Path, wheel: Path) -> Path:
    """A fresh venv holding the wheel; its third-party dependencies are the test venv's, seen through a .pth
    line (that folder's own .pth files, the checkout's editable finder among them, are not processed)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return where / "bin"


def test_the_wheel_serves_a_demo_with_the_managed_slapd_outside_the_checkout(tmp_path: Path) -> None:
    build = tmp_path / "build"
    build.mkdir()
    wheel = _wheel(build)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {f"directory/ldap/shipped/{name}" for name in SHIPPED} <= names
        for name in SHIPPED:  # the files themselves, byte for byte the repository's
            top = ("deploy/" if name.startswith("slapd/") else "") + name
            assert archive.read(f"directory/ldap/shipped/{name}") == (ROOT / top).read_bytes(), name

    bin_dir = _venv(tmp_path / "venv", wheel)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SOFTHSM2_CONF")}

    def annuaire(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bin_dir / "annuaire"), *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=120)

    where = subprocess.run([str(bin_dir / "python"), "-c", "import directory.ldap.slapd as s; "
                            "print(s.__file__); print(s.PROVIDER_TEMPLATE)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(tmp_path / "venv") for p in where), where
    assert not Path(where[1]).is_symlink() and Path(where[1]).is_file()

    version = annuaire("--version")
    assert version.returncode == 0 and version.stdout.startswith("annuaire 0."), version

    port, ldap_port, admin_port = free_port(), free_port(), free_port()
    made = annuaire("init-demo", "demo", "--certs", "3", "--http-port", str(port), "--ldap-port", str(ldap_port),
                    "--admin-port", str(admin_port))
    assert made.returncode == 0, made.stderr
    config = work / "demo" / "annuaire.toml"
    assert "managed = true" in config.read_text()

    proc = subprocess.Popen([str(bin_dir / "annuaire"), "serve", "--config", str(config)], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, status = time.monotonic() + 60, 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = http(f"http://127.0.0.1:{port}/readyz")[0]
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.3)
        assert status == 200, f"not ready ({proc.poll()})"
        slapd_conf = (work / "demo" / "data" / "ldap" / "slapd.conf").read_text()
        assert str(ROOT) not in slapd_conf  # nothing read from the checkout
        found = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", f"ldap://127.0.0.1:{ldap_port}", "-b", "",
                                "-s", "base", "namingContexts"], capture_output=True, text=True, timeout=10)
        assert found.returncode == 0 and "namingContexts:" in found.stdout, found.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
