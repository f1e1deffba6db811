"""Helpers shared by the benchmarks: a demo built on demand under bench/out, peak RSS."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def demo(name: str, key_type: str, certs: int = 0) -> Path:
    """An init-demo directory under bench/out (built once, reused)."""
    directory = OUT / name
    if not (directory / "annuaire.toml").exists():
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "directory.cli", "init-demo", str(directory), "--certs", str(certs),
                        "--key-type", key_type], check=True)
    return directory


def peak_rss_mb_children() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def config_with_data_dir(demo_dir: Path, work: Path) -> Path:
    """``work/annuaire.toml``: the demo's CA files, token and secrets, with a registry of its own in ``work/data``."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    text = (demo_dir / "annuaire.toml").read_text().replace('data_dir = "data"', f'data_dir = "{data}"')
    for rel in ("hsm/pin", "hsm/softhsm2.conf", "secrets/ldap-password", "secrets/admin-token"):
        text = text.replace(f'"{rel}"', f'"{demo_dir / rel}"')
    config = work / "annuaire.toml"
    text = text.replace('file = "pc/', f'file = "{demo_dir}/pc/')  # the CAs' certification policy documents
    config.write_text(text.replace('certificate = "ca/', f'certificate = "{demo_dir}/ca/'))
    return config
