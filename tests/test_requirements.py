"""The locked, hash-checked dependency set (requirements/*.txt, what `make` and CI install) agrees with
pyproject.toml's floors, with itself, and with what this venv runs; psycopg is the postgresql extra."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

REQUIREMENTS = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^ \\;]+)")


def _locked(name: str) -> dict[str, str]:
    """name -> version of every pin in requirements/NAME.txt; each pin carries at least one sha256."""
    text = (REQUIREMENTS / name).read_text()
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", text):
        match = PIN.match(block)
        if match:
            assert "--hash=sha256:" in block, f"{name}: {match.group(1)} has no hash"
            pins[canonicalize_name(match.group(1))] = match.group(2)
        else:
            assert not block.strip() or block.lstrip().startswith("#"), f"{name}: unpinned line {block[:80]!r}"
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_locks_meet_the_floors_and_agree_with_each_other() -> None:
    dev, runtime, build = _locked("dev.txt"), _locked("runtime.txt"), _locked("build.txt")
    project = _project()["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    extras = project["optional-dependencies"]
    for lock, names in ((runtime, ["postgresql"]), (dev, ["postgresql", "dev"])):
        for requirement in wanted + [Requirement(r) for extra in names for r in extras[extra]]:
            version = lock.get(canonicalize_name(requirement.name))
            assert version is not None, f"{requirement.name} is not locked"
            assert requirement.specifier.contains(version, prereleases=True), f"{requirement}: locked {version}"
    for name, version in {**runtime, **build}.items():  # one resolution: the image runs what the tests ran
        assert dev.get(name) == version, (name, version, dev.get(name))
    (backend,) = [Requirement(r) for r in _project()["build-system"]["requires"]]
    assert backend.specifier.contains(build["setuptools"])


def test_psycopg_is_the_postgresql_extra_only() -> None:
    project = _project()["project"]
    assert not any(Requirement(r).name == "psycopg" for r in project["dependencies"])
    assert [Requirement(r).name for r in project["optional-dependencies"]["postgresql"]] == ["psycopg"]
    assert "psycopg" in _locked("runtime.txt")  # the image serves a PostgreSQL registry (deploy/compose)


def test_this_venv_runs_the_locked_versions() -> None:
    """What `make` installed: every locked package at its locked version (run `make venv` after a lock
    change), setuptools current (the lock's, not the one venv bundles), and nothing broken."""
    drift = {}
    for name, version in _locked("dev.txt").items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            drift[name] = (version, installed)
    assert drift == {}, f"locked vs installed (make venv installs the lock): {drift}"
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
