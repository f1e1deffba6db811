"""Bad input, generated: the OCSP request and GET path decoders, the responder's fast path, certificate
import and the admin API's JSON. Whatever arrives: a precise refusal, no other exception, no HTTP 500,
nothing written. (The million-input run is `bench/fuzz.py`; this is the fast sample.)"""

from __future__ import annotations

import base64
import json
import random
import urllib.parse
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from directory.config import load_config
from directory.ingest.importer import CertificateRefused
from directory.runtime import importer_for, open_config_registry, open_hsm
from ocsp import response as resp
from ocsp.request import Malformed, decode_get_path, parse_request
from ocsp.responder import OcspResponder, Outcome
from tests.admin_client import call
from tests.faults.mutation import mutate
from tests.served import http, serve


def _valid_requests() -> list[bytes]:
    """Well-formed requests of every shape we accept (made-up hashes: only the structure matters)."""
    out = []
    for algorithm in (hashes.SHA1(), hashes.SHA256(), hashes.SHA512()):
        for nonce in (None, b"\x01" * 16):
            builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
                b"\x00" * algorithm.digest_size, b"\x11" * algorithm.digest_size, 0x1234567890ABCDEF, algorithm)
            if nonce:
                builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
            out.append(builder.build().public_bytes(serialization.Encoding.DER))
    return out


VALID = _valid_requests()


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    return mutate(rng.choice(VALID), rng, rounds=draw(st.integers(1, 6)))


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.binary(max_size=400), mutated_requests()))
def test_request_decoder_refuses_precisely(data: bytes) -> None:
    try:
        request = parse_request(data, 10)
    except Malformed as exc:
        assert str(exc)
        return
    assert 1 <= len(request.cert_ids) <= 10


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.text(max_size=300),
                 mutated_requests().map(lambda d: urllib.parse.quote(base64.b64encode(d).decode(), safe="")),
                 mutated_requests().map(lambda d: base64.b64encode(d).decode().rstrip("=").replace("+", " "))))
def test_get_path_decoder_refuses_precisely(text: str) -> None:
    try:
        der = decode_get_path(text)
        parse_request(der, 10)
    except Malformed as exc:
        assert str(exc)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), mutated_requests(), st.text(max_size=300),
                      mutated_requests().map(lambda d: "/" + base64.b64encode(d).decode())))
def test_responder_fast_path_never_raises(private_config: Path, data: bytes | str) -> None:
    config = load_config(private_config)
    global _RESPONDER
    if _RESPONDER is None or _RESPONDER[0] != private_config:
        _RESPONDER = (private_config, OcspResponder(config, open_hsm(config), open_config_registry(config)))
    answer = _RESPONDER[1].from_cache(data)
    if isinstance(answer, Outcome):
        assert answer.status in ("malformedRequest", "unauthorized", "successful")
        if answer.status != "successful":
            assert answer.body in (resp.error_response(resp.MALFORMED_REQUEST),
                                   resp.error_response(resp.UNAUTHORIZED))
    assert len(_RESPONDER[1].requests) == 0  # made-up issuer hashes: nothing here is for a served issuer


_RESPONDER: tuple[Path, OcspResponder] | None = None


def test_http_fuzz_never_500_and_always_an_ocsp_answer(demo: Path) -> None:
    rng = random.Random(20261129)
    with serve(demo) as served:
        statuses: dict[int, int] = {}
        for n in range(600):
            if n % 3:
                data = mutate(rng.choice(VALID), rng, rounds=rng.randint(1, 6))
            else:
                data = rng.randbytes(rng.randint(0, 200))
            if n % 2:
                status, _, body = http(served.base + "/ocsp", method="POST", body=data,
                                       headers={"Content-Type": "application/ocsp-request"})
            else:
                path = urllib.parse.quote(base64.b64encode(data).decode(), safe="") if data else ""
                status, _, body = http(served.base + "/ocsp/" + path)
            statuses[status] = statuses.get(status, 0) + 1
            assert status != 500
            if status == 200:
                assert ocsp.load_der_ocsp_response(body).response_status is not None
        assert statuses.get(200, 0) > 500, statuses


def test_mutated_certificates_are_refused_and_change_nothing(private_config: Path, demo_token: Path) -> None:
    config = load_config(private_config)
    registry = open_config_registry(config)
    importer = importer_for(config, registry, actor="fuzz")
    manifest = json.loads((demo_token / "certs" / "manifest.json").read_text())
    originals = [x509.load_pem_x509_certificate((demo_token / "certs" / m["file"]).read_bytes())
                 .public_bytes(serialization.Encoding.DER) for m in manifest[:10]]
    for der in originals:  # present already: a mutation that happens to give them back changes nothing
        importer.import_der(der)
    before = (registry.counts(), len(registry.audit_records()))
    rng = random.Random(7)
    refused = 0
    for _ in range(1500):
        der = mutate(rng.choice(originals), rng, rounds=rng.randint(1, 4))
        if rng.random() < 0.3:  # the same accidents inside PEM armour
            der = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
        try:
            result = importer.import_der(der)
        except CertificateRefused as exc:
            assert str(exc)
            refused += 1
            continue
        # without the CA key no changed certificate verifies: only an unchanged one gets through, as present
        assert der in originals and result[2] == "present", result
    assert refused > 1400
    assert (registry.counts(), len(registry.audit_records())) == before
    registry.close()


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                                      children, max_size=4),
                     max_leaves=12)
_REVOCATION = st.fixed_dictionaries(
    {}, optional={"issuer": st.one_of(st.just("ac-personnes"), st.text(max_size=70), _JSON),
                  "serial": st.one_of(st.from_regex(r"(0x)?[0-9a-fA-F]{1,40}", fullmatch=True), st.text(max_size=60),
                                      st.integers()),
                  "reason": st.one_of(st.sampled_from(["keyCompromise", "certificateHold", "superseded"]),
                                      st.text(max_size=20)),
                  "invalidity_date": st.one_of(st.just("2026-01-01T00:00:00Z"), st.text(max_size=40), st.integers()),
                  "extra": _JSON})


def test_admin_api_json_fuzz_never_500(demo: Path) -> None:
    token = (demo.parent / "secrets" / "admin-token").read_text().strip()
    with serve(demo) as served:
        admin = served.admin
        seen: dict[int, int] = {}

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(body=st.one_of(_REVOCATION, _JSON))
        def post(body: object) -> None:
            status, _, answer = call(admin, "POST", "/api/v1/revocations", json.dumps(body).encode(), token=token,
                                     content_type="application/json")
            seen[status] = seen.get(status, 0) + 1
            assert status in (200, 201, 404, 409, 422), (status, body, answer)
            assert (isinstance(answer, dict) and answer.get("detail")) or status in (200, 201)

        post()
        raw = [b"", b"{", b"\xff\xfe", b"[]" * 10000, b'{"issuer": "' + b"a" * 5000 + b'"}']
        for body in raw:
            status, _, _ = call(admin, "POST", "/api/v1/revocations", body, token=token,
                                content_type="application/json")
            assert status in (413, 422), (status, body[:20])
        assert seen.get(422, 0) > 100, seen
    from tests.conftest import run_cli

    assert run_cli("audit", "verify", "-c", str(demo)).returncode == 0
