"""Replicated OpenLDAP from deploy/slapd: two providers in multi-provider replication and one read-only
consumer (real slapd processes on loopback). The first provider runs from slapd.conf, the second provider and
the consumer from the cn=config (OLC) forms. Replication binds as the dedicated replicator (an {ARGON2}
hash, seeded into both providers before their first start) over StartTLS, checking the providers'
certificates against a throw-away test CA; the replicator's password is refused in clear, so replication
runs over TLS or not at all. The sync writes to the first provider; that provider is SIGKILLed mid-sync;
the sync fails over to the second; every node converges with nothing lost, and a new certificate is found
on the consumer within a measured bound."""

from __future__ import annotations

import base64
import dataclasses
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from directory.config import load_config
from directory.demo.init import DemoUrls, issue_end_entities
from directory.demo.issuance import CertificateAuthority
from directory.ingest.importer import ImportSummary
from directory.ingest.sources import SourceItem
from directory.ldap.managed import ensure_skeleton
from directory.ldap.slapd import CONSUMER, MULTI_PROVIDER, PROVIDER_TEMPLATE, SEED, Slapd, SlapdConfig, hash_password
from directory.runtime import importer_for, open_config_registry, open_hsm
from tests.conftest import free_port, run_cli
from tests.ldap_env import SUFFIX, search
from tests.test_ldap_sync import _tls_files

ROOT_DN = f"cn=admin,{SUFFIX}"
REPLICATOR_DN = f"cn=replicator,{SUFFIX}"


def _count(node: Slapd) -> int:
    """Entries on ``node`` (as its rootdn: no size limit), by ldapsearch."""
    result = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", node.config.url, "-D", ROOT_DN, "-w",
                             node.config.root_password, "-b", SUFFIX, "(objectClass=*)", "1.1"],
                            capture_output=True, text=True)
    return sum(1 for line in result.stdout.splitlines() if line.startswith("dn:"))


def _dns(node: Slapd) -> dict[str, list[bytes]]:
    found = search(node.config.url, SUFFIX, "(objectClass=*)", "userCertificate;binary",
                   bind=(ROOT_DN, node.config.root_password))
    return {dn.lower(): sorted(e.get("userCertificate;binary", [])) for dn, e in found.items()}


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[dict[str, Slapd]]:
    root_password, replicator_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    ca, cert, key = _tls_files(tmp_path)  # one server certificate for 127.0.0.1, as the URLs say
    ports = {name: free_port() for name in ("p1", "p2", "c")}
    urls = {name: f"ldap://127.0.0.1:{port}/" for name, port in ports.items()}
    values = {"PROVIDER1_URL": urls["p1"], "PROVIDER2_URL": urls["p2"], "REPLICATOR_DN": REPLICATOR_DN,
              "REPLICATOR_PW": replicator_password, "TLS_CA_FILE": str(ca), "TLS_CERT_FILE": str(cert),
              "TLS_KEY_FILE": str(key),
              "REPLICATOR_PW_HASH": hash_password(replicator_password),
              "SERVICE_PW_HASH": hash_password(secrets.token_urlsafe(16))}  # ensure_skeleton sets the real one
    nodes = {}
    for name, replication, olc in (("p1", MULTI_PROVIDER, False), ("p2", MULTI_PROVIDER, True),
                                   ("c", CONSUMER, True)):
        nodes[name] = Slapd(SlapdConfig(directory=tmp_path / name, suffix=SUFFIX, root_dn=ROOT_DN,
                                        root_password=root_password, port=ports[name], template=PROVIDER_TEMPLATE,
                                        service_dn=f"cn=annuaire,{SUFFIX}", replication=replication,
                                        replication_values=values, olc=olc))
    try:
        for name in ("p1", "p2"):  # the same seed into every provider before its first start
            nodes[name].load(nodes[name].config.fill(SEED.read_text(), SEED))
        for node in nodes.values():
            node.start()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


def _replicator(tool: str, node: Slapd, *args: str, tls: bool, ldif: str | None = None,
                ) -> subprocess.CompletedProcess[str]:
    values = node.config.replication_values
    return subprocess.run([tool, "-x", *(["-ZZ"] if tls else []), "-H", node.config.url, "-D", REPLICATOR_DN,
                           "-w", values["REPLICATOR_PW"], *args], input=ldif, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "LDAPTLS_CACERT": values["TLS_CA_FILE"],
                               "LDAPTLS_REQCERT": "demand"})


def test_replication_binds_as_the_replicator_over_starttls_only(cluster: dict[str, Slapd], tmp_path: Path) -> None:
    p1, p2, consumer = cluster["p1"], cluster["p2"], cluster["c"]
    for provider in (p1, p2):
        clear = _replicator("ldapwhoami", provider, tls=False)
        assert clear.returncode == 49, clear  # invalidCredentials: the password is not accepted in clear
        tls = _replicator("ldapwhoami", provider, tls=True)
        assert tls.returncode == 0 and f"dn:{REPLICATOR_DN}" in tls.stdout, tls
        write = _replicator("ldapmodify", provider, tls=True, ldif=(
            f"dn: {SUFFIX}\nchangetype: modify\nreplace: description\ndescription: nope\n"))
        assert write.returncode == 50, write  # insufficientAccessRights: it only reads
    # passwords are {ARGON2} hashes: in the directory, and the rootdn's in both configuration forms
    stored = subprocess.run(["slapcat", *p2.config_args(), "-b", SUFFIX, "-a", f"(entryDN={REPLICATOR_DN})"],
                            capture_output=True, text=True, check=True).stdout
    assert "userPassword:: " in stored and b"{ARGON2}$argon2" in base64.b64decode(
        stored.split("userPassword:: ")[1].split("\n")[0] + "==")
    assert re.search(r"^rootpw\s+\{ARGON2\}", p1.conf_file.read_text(), re.M)
    olc = subprocess.run(["slapcat", "-n", "0", "-o", "ldif-wrap=no", *p2.config_args()], capture_output=True,
                         text=True, check=True).stdout
    assert base64.b64decode(olc.split("olcRootPW:: ")[1].split("\n")[0]).startswith(b"{ARGON2}$argon2")
    # the consumer got the seed (suffix, two accounts) over TLS; one that cannot check the providers'
    # certificate (it trusts another CA) gets nothing
    (tmp_path / "other").mkdir()
    values = {**consumer.config.replication_values, "TLS_CA_FILE": str(_tls_files(tmp_path / "other")[0])}
    untrusting = Slapd(dataclasses.replace(consumer.config, directory=tmp_path / "untrusting", port=free_port(),
                                           replication_values=values))
    untrusting.start()
    try:
        deadline = time.monotonic() + 15
        while _count(consumer) < 3:
            assert time.monotonic() < deadline, _count(consumer)
            time.sleep(0.2)
        time.sleep(3)  # past the 2 s retry: the untrusting consumer has tried again and failed again
        assert _count(untrusting) == 0
    finally:
        untrusting.stop()


def test_multi_provider_failover_and_consumer_lookups(cluster: dict[str, Slapd], private_config: Path,
                                                      demo_token: Path) -> None:
    p1, p2, consumer = cluster["p1"], cluster["p2"], cluster["c"]
    text = re.sub(r'urls = \["ldap://127\.0\.0\.1:\d+"\]',
                  f'urls = ["{p1.config.url}", "{p2.config.url}"]', private_config.read_text())
    private_config.write_text(text.replace("managed = true", "managed = false"))
    config = load_config(private_config)
    assert config.ldap is not None
    ensure_skeleton(p1, config.ldap)  # the suffix, branches and service entry, written once, replicated

    # a registry big enough for a sync to take a while: the demo plus 1,500 holders' certificates
    registry = open_config_registry(config)
    importer = importer_for(config, registry, actor="test")
    assert not importer.import_paths([demo_token / "certs"]).refused
    hsm = open_hsm(config)
    try:
        cas = {}
        for name in ("ac-personnes", "ac-structures"):
            cert = config.issuer(name).certificate
            spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            cas[name] = CertificateAuthority(name, cert.subject, hsm.key(name, cert), spki, cert)
        issued = issue_end_entities(hsm, cas, 1500, "ec", DemoUrls("http://x", "ldap://x"), first=20_000)
        late = issue_end_entities(hsm, cas, 1, "ec", DemoUrls("http://x", "ldap://x"), first=30_000)
    finally:
        hsm.close()
    summary = ImportSummary()
    importer.import_items(((n, SourceItem(f"gen-{n}", der=c.public_bytes(Encoding.DER)))
                           for n, (_, _, c) in enumerate(issued)), summary)
    assert not summary.refused

    # the sync writes to p1; p1 is killed once 150 entries are in
    sync = subprocess.Popen([*_cli(), "ldap", "sync", "--full", "-c", str(private_config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while _count(p1) < 150:
        assert time.monotonic() < deadline and sync.poll() is None, "the sync ended before the kill"
        time.sleep(0.01)
    p1.kill()
    out, err = sync.communicate(timeout=60)
    assert sync.returncode == 1 and "directory" in err, (out, err)  # the pass lost its server: reported

    # the next pass fails over to p2 and completes; p1 comes back and catches up from p2
    run_cli("ldap", "sync", "--full", "-c", str(private_config), check=True)
    p1.start()
    expected = _dns(p2)
    assert len(expected) > 750  # five entries per ten certificates (two professionals, three structures)
    deadline = time.monotonic() + 30
    while not (_dns(p1) == expected and _dns(consumer) == expected):
        assert time.monotonic() < deadline, (len(_dns(p1)), len(_dns(consumer)), len(expected))
        time.sleep(0.5)
    # and the directory is exactly what the registry says (verify reads the first reachable provider)
    assert run_cli("ldap", "verify", "-c", str(private_config)).returncode == 0

    # a new certificate: written to a provider, found on the consumer by a relying application's lookup
    _, _, cert = late[0]
    assert importer.import_der(cert.public_bytes(Encoding.DER))[2] == "created"
    run_cli("ldap", "sync", "-c", str(private_config), check=True)
    written = time.monotonic()
    issuer = cert.issuer.rfc4514_string()
    lookup = f'(userCertificate={{ serialNumber {cert.serial_number}, issuer rdnSequence:"{issuer}" }})'
    while not search(consumer.config.url, SUFFIX, lookup):
        assert time.monotonic() - written < 10, "not replicated to the consumer"
        time.sleep(0.01)
    bound = time.monotonic() - written
    # a write sent to the consumer is referred to a provider, not applied
    refused = subprocess.run(["ldapmodify", "-x", "-H", consumer.config.url, "-D", ROOT_DN, "-w",
                              consumer.config.root_password],
                             input=f"dn: ou=AC,{SUFFIX}\nchangetype: modify\nreplace: description\n"
                                   "description: nope\n", capture_output=True, text=True)
    assert refused.returncode == 10 and "referral" in (refused.stdout + refused.stderr).lower(), refused
    registry.close()
    print(f"replicated to the consumer {bound * 1000:.0f} ms after the provider write")
    assert bound < 2.0, bound
    assert isinstance(cert, x509.Certificate)


def _cli() -> list[str]:
    from tests.conftest import ANNUAIRE

    return list(ANNUAIRE)
