"""The hand-encoded OCSP responses are byte-identical to asn1crypto's encoding of the same values.

Random statuses, times, reasons, serials, nonces, several SingleResponses, certificates sent along and
signature algorithms: ``ocsp.response`` + ``ocsp.cert_id`` (ResponseData, BasicOCSPResponse, OCSPResponse)
against asn1crypto's ``dump()`` of the structure built from the same values.
"""

from __future__ import annotations

import datetime as dt

from asn1crypto import algos, core
from asn1crypto import ocsp as aocsp
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from directory import cert_id
from ocsp import response as resp

DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
# reason codes as RFC 5280 numbers them (7 is unused); 0, unspecified, is left out of the answer as on CRLs
REASONS = {1: "key_compromise", 2: "ca_compromise", 3: "affiliation_changed", 4: "superseded",
           5: "cessation_of_operation", 6: "certificate_hold", 8: "remove_from_crl", 9: "privilege_withdrawn",
           10: "aa_compromise"}
# signature algorithms as our signer spells them (DER) and as asn1crypto names them
SIGNATURE_ALGORITHMS = {
    bytes.fromhex("300d06092a864886f70d01010b0500"): {"algorithm": "sha256_rsa", "parameters": core.Null()},
    bytes.fromhex("300a06082a8648ce3d040302"): {"algorithm": "sha256_ecdsa"},
    bytes.fromhex("300a06082a8648ce3d040304"): {"algorithm": "sha512_ecdsa"},
}
TIMES = st.integers(0, 253402300799)  # 1970 to 9999-12-31T23:59:59Z


def _certificate(n: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, f"responder {n}")])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(n + 1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


CERTIFICATES = [_certificate(n) for n in range(2)]


def _time(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


@st.composite
def singles(draw: st.DrawFn) -> dict:
    hash_name = draw(st.sampled_from(list(DIGEST_SIZES)))
    size = DIGEST_SIZES[hash_name]
    status = draw(st.sampled_from(["good", "revoked", "unknown"]))
    return {"hash": hash_name, "name_hash": draw(st.binary(min_size=size, max_size=size)),
            "key_hash": draw(st.binary(min_size=size, max_size=size)), "serial": draw(st.integers(0, 2**160 - 1)),
            "status": status, "revoked_at": draw(TIMES) if status == "revoked" else None,
            "reason": draw(st.sampled_from([None, 0, *REASONS])) if status == "revoked" else None,
            "this": draw(TIMES), "next": draw(TIMES)}


def _ours(values: dict) -> tuple[bytes, bytes]:
    """(ResponseData, OCSPResponse) as the responder encodes them."""
    encoded = []
    for s in values["singles"]:
        cid = cert_id.encode(cert_id.prefix(s["hash"], s["name_hash"], s["key_hash"]), s["serial"])
        status = resp.SingleStatus(cid, s["status"], s["revoked_at"], s["reason"])
        encoded.append(resp.single_response(status, s["this"], s["next"]))
    tbs = resp.response_data(values["key_hash"], values["produced"], encoded, values["nonce"], values["extended"])
    signed = resp.signed_part(tbs, values["algorithm"], values["signature"])
    assembled = resp.assemble(signed, resp.certs_field(values["certs"]))
    # a live answer's way, from the pieces: the same bytes
    assert resp.assemble_signed(tbs, values["algorithm"], values["signature"],
                                resp.certs_field(values["certs"])) == assembled
    return tbs, assembled


def _asn1crypto(values: dict) -> tuple[bytes, bytes]:
    """The same values through asn1crypto's encoder."""
    responses = []
    for s in values["singles"]:
        if s["status"] == "revoked":
            info = {"revocation_time": _time(s["revoked_at"])}
            if s["reason"]:
                info["revocation_reason"] = REASONS[s["reason"]]
            status = aocsp.CertStatus(name="revoked", value=info)
        else:
            status = aocsp.CertStatus(name=s["status"], value=core.Null())
        responses.append({
            "cert_id": {"hash_algorithm": algos.DigestAlgorithm({"algorithm": s["hash"], "parameters": core.Null()}),
                        "issuer_name_hash": s["name_hash"], "issuer_key_hash": s["key_hash"],
                        "serial_number": s["serial"]},
            "cert_status": status, "this_update": _time(s["this"]), "next_update": _time(s["next"])})
    data: dict = {"responder_id": aocsp.ResponderId(name="by_key", value=values["key_hash"]),
                  "produced_at": _time(values["produced"]), "responses": responses}
    extensions = []
    if values["nonce"] is not None:
        extensions.append({"extn_id": "nonce", "critical": False, "extn_value": values["nonce"]})
    if values["extended"]:
        extensions.append({"extn_id": "extended_revoke", "critical": False, "extn_value": core.Null()})
    if extensions:
        data["response_extensions"] = extensions
    tbs = aocsp.ResponseData(data)
    basic: dict = {"tbs_response_data": tbs,
                   "signature_algorithm": SIGNATURE_ALGORITHMS[values["algorithm"]],
                   "signature": values["signature"]}
    if values["certs"]:
        basic["certs"] = [ax509.Certificate.load(c) for c in values["certs"]]
    response = aocsp.OCSPResponse({"response_status": "successful", "response_bytes": {
        "response_type": "basic_ocsp_response", "response": aocsp.BasicOCSPResponse(basic)}})
    return tbs.dump(force=True), response.dump(force=True)


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({
    "singles": st.lists(singles(), min_size=1, max_size=4), "key_hash": st.binary(min_size=20, max_size=20),
    "produced": TIMES, "nonce": st.none() | st.binary(min_size=1, max_size=32), "extended": st.booleans(),
    "algorithm": st.sampled_from(list(SIGNATURE_ALGORITHMS)), "signature": st.binary(min_size=0, max_size=600),
    "certs": st.lists(st.sampled_from(CERTIFICATES), max_size=2)}))
def test_responses_are_byte_identical_to_asn1crypto(values: dict) -> None:
    ours_tbs, ours = _ours(values)
    theirs_tbs, theirs = _asn1crypto(values)
    assert ours_tbs == theirs_tbs
    assert ours == theirs


def test_error_responses_are_byte_identical_to_asn1crypto() -> None:
    for code, name in ((1, "malformed_request"), (2, "internal_error"), (3, "try_later"), (5, "sign_required"),
                       (6, "unauthorized")):
        assert resp.error_response(code) == aocsp.OCSPResponse({"response_status": name}).dump(force=True)
