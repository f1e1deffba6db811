"""deploy/slapd's cn=config (OLC) forms: each loads (slapadd -n 0, slapmodify -n 0, then `slaptest -F`) and
configures what the slapd.conf form does. The reference is slapd's own conversion of the slapd.conf form
(`slaptest -f slapd.conf -F DIR`); both folders are read back with slapcat and compared on what matters:
schema, indexes, ACLs, limits, passwords, TLS and replication. (tests/test_ldap_replication.py runs a
provider and the consumer from these forms.)"""

from __future__ import annotations

import base64
import dataclasses
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from directory.ldap.slapd import CONSUMER, MULTI_PROVIDER, PROVIDER_TEMPLATE, Slapd, SlapdConfig
from tests.test_ldap_sync import _tls_files

SUFFIX = "o=sante,c=fr"
Entries = dict[str, dict[str, list[str]]]
# what the comparison reads, per entry (attribute values compared after the normalisation below)
DATABASE = ("olcSuffix", "olcRootDN", "olcRootPW", "olcDbDirectory", "olcDbMaxSize", "olcDbNoSync", "olcDbCheckpoint",
            "olcAccess", "olcLimits", "olcMultiProvider", "olcUpdateRef")
GLOBAL = ("olcPidFile", "olcServerID", "olcTLSCACertificateFile", "olcTLSCertificateFile", "olcTLSCertificateKeyFile")
SYNCPROV = ("olcSpCheckpoint", "olcSpSessionlog")


def _slapcat(config_dir: Path) -> Entries:
    result = subprocess.run(["slapcat", "-n", "0", "-F", str(config_dir), "-o", "ldif-wrap=no"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    entries: Entries = {}
    for block in out.strip().split("\n\n"):
        attrs: dict[str, list[str]] = {}
        for line in block.splitlines():
            name, sep, value = line.partition(": ")
            if name.endswith(":"):  # name:: base64
                name, value = name[:-1], base64.b64decode(value).decode()
            if sep:
                attrs.setdefault(name, []).append(value)
        entries[attrs["dn"][0]] = attrs
    return entries


def _normal(value: str) -> str:
    """One spelling for what slapd writes two ways: the {N} order prefix, dn.exact/dn.base, spacing."""
    value = re.sub(r"^\{-?\d+\}", "", value)
    return " ".join(value.replace("dn.exact=", "dn.base=").split())


def _indexes(values: list[str]) -> set[tuple[str, str]]:
    return {(attr.lower(), ",".join(sorted(kinds.split(",")))) for value in values
            for attrs, kinds in [value.split()] for attr in attrs.split(",")}


def _syncrepl(value: str) -> dict[str, str]:
    return dict(token.split("=", 1) for token in shlex.split(_normal(value)))


def _loaded_pair(tmp_path: Path, replication: Path | None) -> tuple[Entries, Entries]:
    _tls_files(tmp_path)  # ca.pem, server.pem, server.key: slapd reads them when it loads the configuration
    values = {"PROVIDER1_URL": "ldap://ldap-provider-1.example/", "PROVIDER2_URL": "ldap://ldap-provider-2.example/",
              "REPLICATOR_PW": "replicator-secret", "TLS_CA_FILE": str(tmp_path / "ca.pem"),
              "TLS_CERT_FILE": str(tmp_path / "server.pem"), "TLS_KEY_FILE": str(tmp_path / "server.key")}
    conf_form = Slapd(SlapdConfig(directory=tmp_path / "node", suffix=SUFFIX, root_dn=f"cn=admin,{SUFFIX}",
                                  root_password="root-secret", template=PROVIDER_TEMPLATE,
                                  service_dn=f"cn=annuaire,{SUFFIX}", replication=replication,
                                  replication_values=values))
    olc_form = Slapd(dataclasses.replace(conf_form.config, olc=True))
    olc_form.config._root_hash = conf_form.config.values()["ROOT_PW"]  # one hash for both: comparable
    conf_form.write_config()
    conf_form.test_config()
    converted = tmp_path / "converted.d"
    converted.mkdir()
    conf_form.load("")  # an empty database: slaptest opens it when it converts (it converts only without -u)
    result = subprocess.run(["slaptest", "-f", str(conf_form.conf_file), "-F", str(converted)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    olc_form.write_config()  # slapadd -n 0 of olc/provider.ldif, slapmodify -n 0 of replication/olc/*.ldif
    olc_form.test_config()  # slaptest -u -F
    return _slapcat(converted), _slapcat(olc_form.config_dir)


@pytest.mark.parametrize("replication", [None, MULTI_PROVIDER, CONSUMER], ids=["provider", "multi-provider",
                                                                                 "consumer"])
def test_olc_form_configures_what_slapd_conf_does(tmp_path: Path, replication: Path | None) -> None:
    reference, olc = _loaded_pair(tmp_path, replication)
    database = "olcDatabase={1}mdb,cn=config"
    # schema: the same files in the same order; ours (the health schema) definition for definition
    schemas = sorted(dn for dn in olc if dn.endswith(",cn=schema,cn=config"))
    assert schemas == sorted(dn for dn in reference if dn.endswith(",cn=schema,cn=config"))
    assert [dn.split(",")[0] for dn in schemas] == ["cn={0}core", "cn={1}cosine", "cn={2}inetorgperson",
                                                    "cn={3}health"]
    health = "cn={3}health,cn=schema,cn=config"
    for kind in ("olcAttributeTypes", "olcObjectClasses"):
        assert [_normal(v) for v in olc[health][kind]] == [_normal(v) for v in reference[health][kind]]
        assert len(olc[health][kind]) in (6, 3)  # attribute types, object classes
    # the database: suffix, root, password hash, files, ACLs in order, limits, replication flags
    defaults = {"olcMultiProvider": ["FALSE"]}  # written out by the conversion when a consumer has syncrepl
    for name in DATABASE:
        assert [_normal(v) for v in olc[database].get(name, defaults.get(name, []))] == \
            [_normal(v) for v in reference[database].get(name, defaults.get(name, []))], name
    assert len(olc[database]["olcAccess"]) == 4 and olc[database]["olcRootPW"][0].startswith("{ARGON2}$argon2")
    assert _indexes(olc[database]["olcDbIndex"]) == _indexes(reference[database]["olcDbIndex"])
    for name in GLOBAL:
        assert olc["cn=config"].get(name) == reference["cn=config"].get(name), name
    modules = {dn: {re.sub(r"^\{\d+\}|\.la$", "", m) for m in e["olcModuleLoad"]} for dn, e in olc.items()
               if "olcModuleLoad" in e}
    loaded = set().union(*modules.values())
    assert {"back_mdb", "argon2"} <= loaded and {re.sub(r"^\{\d+\}|\.la$", "", m) for e in reference.values()
                                                for m in e.get("olcModuleLoad", [])} <= loaded
    # replication: the same syncrepl settings (slapd's conversion adds defaults: compare what the forms say)
    ours = sorted((_syncrepl(v) for v in olc[database].get("olcSyncrepl", [])), key=lambda s: s["rid"])
    theirs = sorted((_syncrepl(v) for v in reference[database].get("olcSyncrepl", [])), key=lambda s: s["rid"])
    assert len(ours) == len(theirs) == (0 if replication is None else 2)
    for mine, converted in zip(ours, theirs, strict=True):
        assert {k: converted.get(k) for k in mine} == mine
        assert mine["binddn"] == f"cn=replicator,{SUFFIX}" and mine["starttls"] == "critical"
        assert mine["tls_reqcert"] == "demand" and mine["tls_cacert"] == str(tmp_path / "ca.pem")
    overlays = [dn for dn in olc if dn.startswith("olcOverlay=")]
    assert overlays == [dn for dn in reference if dn.startswith("olcOverlay=")]
    assert (overlays == ["olcOverlay={0}syncprov," + database]) == (replication is MULTI_PROVIDER)
    for dn in overlays:
        for name in SYNCPROV:
            assert olc[dn][name] == reference[dn][name], name


def test_a_placeholder_left_unfilled_is_refused(tmp_path: Path) -> None:
    node = Slapd(SlapdConfig(directory=tmp_path / "node", suffix=SUFFIX, root_dn=f"cn=admin,{SUFFIX}",
                             root_password="x", template=PROVIDER_TEMPLATE, replication=MULTI_PROVIDER, olc=True,
                             replication_values={"PROVIDER1_URL": "ldap://a/", "PROVIDER2_URL": "ldap://b/"}))
    with pytest.raises(Exception, match=r"multi-provider\.ldif: placeholder @TLS_CA_FILE@ has no value"):
        node.write_config()
