"""pytest fixture: a private slapd (temp dir, free loopback port, mdb, dbnosync) per test that asks."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from directory.ldap.slapd import Slapd, SlapdConfig

SUFFIX = "o=sante,c=fr"


@pytest.fixture()
def slapd(tmp_path: Path) -> Iterator[Slapd]:
    from tests.conftest import free_port

    server = Slapd(SlapdConfig(directory=tmp_path / "slapd", suffix=SUFFIX, root_dn=f"cn=admin,{SUFFIX}",
                               root_password=secrets.token_urlsafe(12), port=free_port()))
    server.start()
    try:
        yield server
    finally:
        server.stop()
