"""No client's request can change what another client is told over OCSP.

The reproductions (a non-minimal serial, junk hashAlgorithm parameters) for SHA-1/256/384/512, on a
known certificate and on one imported a moment ago (not pre-signed yet), over POST and GET, each
followed by normal clients (`openssl ocsp`, `cryptography`) that must get a parseable, verified answer
naming their own serial with the right status; what is persisted is canonical; migration 7 drops what
an older version persisted; and any mutated request followed by a normal one leaves the normal answer right.
"""

from __future__ import annotations

import base64
import json
import random
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from asn1crypto import ocsp as aocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509 import ocsp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from directory.config import load_config
from directory.registry import Registry
from directory.runtime import importer_for, open_config_registry, open_hsm
from ocsp.responder import OcspResponder, Outcome
from tests import ocsp_requests as build
from tests.admin_client import call
from tests.conftest import ROOT, run_cli
from tests.faults.mutation import mutate
from tests.served import http, serve

ALGORITHMS = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}
STATUS = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED}


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _normal_request(cert: x509.Certificate, issuer: x509.Certificate, hash_name: str) -> bytes:
    return ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, ALGORITHMS[hash_name]).build().public_bytes(
        serialization.Encoding.DER)


def _expected_cert_id(cert: x509.Certificate, issuer: x509.Certificate, hash_name: str) -> bytes:
    """The CertID a normal client (cryptography, i.e. OpenSSL) sends: what the answer must carry."""
    der = _normal_request(cert, issuer, hash_name)
    return aocsp.OCSPRequest.load(der)["tbs_request"]["request_list"][0]["req_cert"].dump()


def _poisoned(cert: x509.Certificate, issuer: x509.Certificate, hash_name: str) -> dict[str, bytes]:
    """The issue's two reproductions, plus spellings that are valid DER but not OpenSSL's (answered)."""
    parsed = ocsp.load_der_ocsp_request(_normal_request(cert, issuer, hash_name))
    name_hash, key_hash, serial = parsed.issuer_name_hash, parsed.issuer_key_hash, parsed.serial_number

    def cid(**kwargs: object) -> bytes:
        return build.cert_id(hash_name, name_hash, key_hash, serial, **kwargs)  # type: ignore[arg-type]

    return {
        "non-minimal serial": build.request(cid(serial_der=build.non_minimal_serial(serial))),
        "junk parameters": build.request(cid(params=build.POISON_PARAMS)),
        "absent parameters (valid)": build.request(cid(params=None)),
        "requestorName (valid)": build.request(cid(), requestor=build.tlv(0x82, b"attacker.example")),
    }


def _check_answer(body: bytes, cert: x509.Certificate, issuer: x509.Certificate, hash_name: str, status: str,
                  responder_cert: x509.Certificate) -> None:
    """cryptography parses it, it is signed by the responder, and it names exactly this client's CertID."""
    answer = ocsp.load_der_ocsp_response(body)
    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.serial_number == cert.serial_number
    assert answer.hash_algorithm.name == ALGORITHMS[hash_name].name
    assert answer.certificate_status == STATUS[status]
    responder_cert.public_key().verify(answer.signature, answer.tbs_response_bytes,  # type: ignore[call-arg]
                                       padding.PKCS1v15(), answer.signature_hash_algorithm)  # type: ignore[arg-type]
    single = aocsp.OCSPResponse.load(body)["response_bytes"]["response"].parsed["tbs_response_data"]["responses"]
    assert len(single) == 1 and single[0]["cert_id"].dump() == _expected_cert_id(cert, issuer, hash_name)


def _openssl(d: Path, base: str, cert_file: Path, hash_name: str, status: str) -> None:
    """`openssl ocsp` finds the single answer whose CertID matches its own, verifies it, prints the status."""
    out = subprocess.run(["openssl", "ocsp", f"-{hash_name}", "-issuer", str(d / "ca" / "ac-personnes.pem"), "-cert",
                          str(cert_file), "-url", base + "/ocsp", "-CAfile", str(d / "ca" / "chain.pem"), "-no_nonce"],
                         capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    assert "Response verify OK" in text and f"{cert_file}: {status}" in out.stdout, text
    if status == "revoked":
        assert "Reason: keyCompromise" in out.stdout, text


def _post(base: str, der: bytes) -> bytes:
    status, headers, body = http(base + "/ocsp", "POST", der, {"Content-Type": "application/ocsp-request"})
    assert status == 200 and headers["Content-Type"] == "application/ocsp-response"
    return body


def _get(base: str, der: bytes) -> bytes:
    status, _, body = http(base + "/ocsp/" + urllib.parse.quote(base64.b64encode(der).decode(), safe=""))
    assert status == 200
    return body


def test_poisoning_requests_change_nothing_for_normal_clients(demo: Path, tmp_path: Path) -> None:
    d = demo.parent
    manifest = json.loads((d / "certs" / "manifest.json").read_text())
    issuer = _load(d / "ca" / "ac-personnes.pem")
    responder_cert = _load(d / "ca" / "ocsp-ac-personnes.pem")
    known = next(m for m in manifest if m["issuer"] == "ac-personnes" and m["status"] == "revoked"
                 and m["reason"] == "keyCompromise")
    new = tmp_path / "new.pem"
    subprocess.run([sys.executable, "-m", "tests.issue_cert", str(demo), "ac-personnes", str(new)], cwd=ROOT,
                   check=True, capture_output=True)
    with serve(demo) as served:
        base = served.base
        run_cli("import", "--config", str(demo), str(new), check=True)
        token = (d / "secrets" / "admin-token").read_text().strip()
        looked_up = call(served.admin, "GET", f"/api/v1/certificates/ac-personnes/0x{_load(new).serial_number:x}",
                         token=token)[2]
        assert looked_up["publication"]["ocsp"]["presigned"] is False  # pre-signing comes every 30 s: not yet
        targets = [(d / "certs" / known["file"], "revoked"), (new, "good")]
        for cert_file, status in targets:
            cert = _load(cert_file)
            for hash_name in ALGORITHMS:
                for what, der in _poisoned(cert, issuer, hash_name).items():
                    for send in (_post, _get):
                        answer = ocsp.load_der_ocsp_response(send(base, der))
                        if "(valid)" in what:  # answered, with the canonical CertID, not the request's bytes
                            _check_answer(send(base, der), cert, issuer, hash_name, status, responder_cert)
                        else:
                            assert answer.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST, what
                        # then normal clients, over POST and GET, get their own answer
                        normal = _normal_request(cert, issuer, hash_name)
                        _check_answer(_post(base, normal), cert, issuer, hash_name, status, responder_cert)
                        _check_answer(_get(base, normal), cert, issuer, hash_name, status, responder_cert)
                _openssl(d, base, cert_file, hash_name, status)
        time.sleep(2.5)  # answers are persisted every 2 s
    db = sqlite3.connect(d / "data" / "registry.sqlite3")
    issuer_der = issuer.public_bytes(serialization.Encoding.DER)
    rows = db.execute("SELECT r.serial_hex, r.hash_name, r.body FROM ocsp_responses r JOIN issuers i "
                      "ON i.id = r.issuer_id WHERE i.certificate_der = ?", (issuer_der,)).fetchall()
    by_serial = {format(_load(f).serial_number, "x"): _load(f) for f, _ in targets}
    checked = 0
    for serial_hex, hash_name, body in rows:
        if serial_hex in by_serial:
            singles = aocsp.ResponseData.load(_tbs(bytes(body)))["responses"]
            assert singles[0]["cert_id"].dump() == _expected_cert_id(by_serial[serial_hex], issuer, hash_name)
            checked += 1
    assert checked >= 2 * len(ALGORITHMS)  # every hash algorithm asked for was answered live, cached, persisted


def _tbs(signed: bytes) -> bytes:
    """The ResponseData TLV at the front of a stored answer (ResponseData + algorithm + signature)."""
    first = signed[1]
    header = 2 + (first & 0x7F if first & 0x80 else 0)
    size = first if not first & 0x80 else int.from_bytes(signed[2:header], "big")
    return signed[:header + size]


# -- migration 7, and the same rule when loading ------------------------------------------------------
def _stored_answer(cid: bytes, responder_key_hash: bytes) -> bytes:
    """A stored answer (ResponseData + algorithm + signature) for one CertID (the signature is not checked),
    as the configured responder (its key id) would have signed it."""
    data = build.seq(build.tlv(0xA2, build.tlv(0x04, responder_key_hash)), build.tlv(0x18, b"20260101000000Z"),
                     build.seq(build.seq(cid, b"\x80\x00", build.tlv(0x18, b"20260101000000Z"),
                                         build.tlv(0xA0, build.tlv(0x18, b"20990101000000Z")))))
    return data + build.seq(build.tlv(0x06, bytes.fromhex("2a864886f70d01010b")), build.NULL) + \
        build.tlv(0x03, b"\x00" + bytes(256))


def _rows(demo: Path) -> tuple[bytes, dict[str, tuple[str, str, bytes]]]:
    manifest = json.loads((demo / "certs" / "manifest.json").read_text())
    issuer = _load(demo / "ca" / "ac-personnes.pem")
    # responderID byKey: SHA-1 of the responder's subjectPublicKey bits (RFC 5280's key identifier method 1)
    signer = _load(demo / "ca" / "ocsp-ac-personnes.pem")
    responder = x509.SubjectKeyIdentifier.from_public_key(signer.public_key()).digest  # type: ignore[arg-type]
    certs = [_load(demo / "certs" / m["file"]) for m in manifest if m["issuer"] == "ac-personnes"][:5]
    parsed = [ocsp.load_der_ocsp_request(_normal_request(c, issuer, "sha256")) for c in certs]
    name_hash, key_hash = parsed[0].issuer_name_hash, parsed[0].issuer_key_hash
    serials = [c.serial_number for c in certs]
    rows = {
        "canonical sha1": ("sha1", _expected_cert_id(certs[0], issuer, "sha1")),
        "canonical sha256": ("sha256", _expected_cert_id(certs[1], issuer, "sha256")),
        "non-minimal serial": ("sha256", build.cert_id("sha256", name_hash, key_hash, serials[2],
                                                       serial_der=build.non_minimal_serial(serials[2]))),
        "junk parameters": ("sha256", build.cert_id("sha256", name_hash, key_hash, serials[3],
                                                    params=build.POISON_PARAMS)),
        "another serial's CertID": ("sha256", _expected_cert_id(certs[0], issuer, "sha256")),
    }
    out = {}
    for (what, (hash_name, cid)), serial in zip(rows.items(), serials, strict=True):
        out[what] = (format(serial, "x"), hash_name, _stored_answer(cid, responder))
    return issuer.public_bytes(serialization.Encoding.DER), out


def test_migration_7_drops_non_canonical_answers(registry_location: str, demo_token: Path) -> None:
    issuer_der, rows = _rows(demo_token)
    registry = Registry(registry_location)
    assert registry.schema_version() >= 7
    registry.ensure_issuer("ac-personnes", _load(demo_token / "ca" / "ac-personnes.pem").subject.public_bytes(),
                           issuer_der)
    registry.ocsp_store([("ac-personnes", s, h, 1_700_000_000, 4_000_000_000, b) for s, h, b in rows.values()]
                        + [("ac-personnes", "abc", "sha1", 1, 2, b"not DER at all")])
    conn = registry._conn()
    registry.backend.begin_write(conn)
    conn.execute("DELETE FROM schema_version WHERE version = 7")  # as if written before migration 7
    conn.execute("COMMIT")
    registry.close()
    migrated = Registry(registry_location)
    left = {(s, h) for s, h in migrated._conn().execute("SELECT serial_hex, hash_name FROM ocsp_responses")}
    assert left == {rows["canonical sha1"][:2], rows["canonical sha256"][:2]}
    assert migrated.schema_version() >= 7
    migrated.close()


def test_non_canonical_rows_are_never_loaded(private_config: Path, demo_token: Path) -> None:
    """A row written after the migration by something else (an older node on the same PostgreSQL)."""
    config = load_config(private_config)
    registry = open_config_registry(config)
    importer = importer_for(config, registry, actor="test")
    manifest = json.loads((demo_token / "certs" / "manifest.json").read_text())
    for m in manifest:
        if m["issuer"] == "ac-personnes":
            importer.import_der(_load(demo_token / "certs" / m["file"]).public_bytes(serialization.Encoding.DER))
    _, rows = _rows(demo_token)
    now = int(time.time()) + 5  # signed after the certificates' last change
    registry.ocsp_store([("ac-personnes", s, h, now, now + 86400, b) for s, h, b in rows.values()])
    hsm = open_hsm(config)
    try:
        responder = OcspResponder(config, hsm, registry)
        assert responder.load_persisted() == 2  # the two canonical rows
        issuer = _load(demo_token / "ca" / "ac-personnes.pem")
        poisoned_serial = int(rows["non-minimal serial"][0], 16)
        cert = next(_load(demo_token / "certs" / m["file"]) for m in manifest
                    if m["issuer"] == "ac-personnes" and int(m["serial_hex"], 16) == poisoned_serial)
        status = next(m["status"] for m in manifest if int(m["serial_hex"], 16) == poisoned_serial)
        body = _answer(responder, _normal_request(cert, issuer, "sha256"))
        _check_answer(body, cert, issuer, "sha256", "good" if status == "good" else "revoked",
                      _load(demo_token / "ca" / "ocsp-ac-personnes.pem"))
    finally:
        hsm.close()
        registry.close()


def _answer(responder: OcspResponder, der: bytes | str) -> bytes:
    first = responder.from_cache(der)
    return first.body if isinstance(first, Outcome) else responder.answer_live(first).body


# -- generated: any mutated request, then a normal one --------------------------------------------------
_STATE: dict[Path, tuple[OcspResponder, list[tuple[x509.Certificate, str]]]] = {}


def _responder(private_config: Path, demo_token: Path) -> tuple[OcspResponder, list[tuple[x509.Certificate, str]]]:
    if private_config not in _STATE:
        config = load_config(private_config)
        registry = open_config_registry(config)
        importer = importer_for(config, registry, actor="test")
        manifest = [m for m in json.loads((demo_token / "certs" / "manifest.json").read_text())
                    if m["issuer"] == "ac-personnes" and m["status"] in ("good", "revoked")][:8]
        targets = []
        for m in manifest:
            cert = _load(demo_token / "certs" / m["file"])
            importer.import_der(cert.public_bytes(serialization.Encoding.DER))
            if m["status"] == "revoked":
                registry.revoke("ac-personnes", m["serial_hex"], "keyCompromise")
            targets.append((cert, m["status"]))
        _STATE.clear()
        _STATE[private_config] = (OcspResponder(config, open_hsm(config), registry), targets)
    return _STATE[private_config]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.integers(0, 7), hash_name=st.sampled_from(list(ALGORITHMS)), seed=st.integers(0, 2**32 - 1),
       how=st.sampled_from(["bytes", "accident", "poison", "get"]))
def test_any_mutated_request_then_a_normal_one_is_answered_right(private_config: Path, demo_token: Path,
                                                                 target: int, hash_name: str, seed: int,
                                                                 how: str) -> None:
    responder, targets = _responder(private_config, demo_token)
    cert, status = targets[target]
    issuer = _load(demo_token / "ca" / "ac-personnes.pem")
    rng = random.Random(seed)
    normal = _normal_request(cert, issuer, hash_name)
    attack: bytes | str
    if how == "bytes":
        attack = mutate(normal, rng, rounds=rng.randint(1, 4))
    elif how == "accident":
        attack = build.with_accident(normal, rng.choice(build.ACCIDENTS), rng) or normal + b"\x00"
    elif how == "poison":
        attack = rng.choice(list(_poisoned(cert, issuer, hash_name).values()))
    else:  # a GET path: junk or a mutated request, percent-encoded or not
        attack = "/" + urllib.parse.quote(base64.b64encode(mutate(normal, rng)).decode(), safe=rng.choice(["", "/+="]))
    _answer(responder, attack)  # whatever it gets (its own business), then:
    _check_answer(_answer(responder, normal), cert, issuer, hash_name, status,
                  _load(demo_token / "ca" / "ocsp-ac-personnes.pem"))
    path = "/" + base64.b64encode(normal).decode()
    _check_answer(_answer(responder, path), cert, issuer, hash_name, status,
                  _load(demo_token / "ca" / "ocsp-ac-personnes.pem"))
