"""Answers ready to send (``OcspResponder.answer_for``): built once, never outliving the answer they were built
from (a drop or replacement of the stored answer, even one racing the build from another thread), expired a
minute before nextUpdate, bounded; their RFC 5019 GET headers follow the clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from directory.config import load_config
from directory.runtime import known_issuers, open_config_registry, open_hsm
from ocsp.responder import PRESIGN_HASH, READY_CACHE, OcspResponder


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_ready_answers_follow_the_stored_ones(private_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from directory.ingest.importer import Importer

    config = load_config(private_config)
    clock = Clock()
    registry = open_config_registry(config)
    cert = config.issuer("ac-personnes").ocsp.signer_certificate  # type: ignore[union-attr]
    Importer(registry, known_issuers(config)).import_der(cert.public_bytes(serialization.Encoding.DER))
    hsm = open_hsm(config)
    try:
        responder = OcspResponder(config, hsm, registry, clock)
        issuer, serial = responder.issuers["ac-personnes"], cert.serial_number
        serial_hex = format(serial, "x")
        assert responder.answer_for(issuer, PRESIGN_HASH, serial) is None
        assert responder.presign("ac-personnes", serial_hex)
        first = responder.answer_for(issuer, PRESIGN_HASH, serial)
        assert first is not None and first.path == "presigned" and first.next_update is not None
        assert responder.answer_for(issuer, PRESIGN_HASH, serial) is first  # built once
        assert responder.ready.capacity == READY_CACHE and responder.ready.bytes > len(first.body)

        now = int(clock())
        headers = first.get_headers(now)
        assert first.get_headers(now) is headers
        assert headers["Cache-Control"] == (f"max-age={first.next_update - now}, public, no-transform, "
                                            "must-revalidate")
        assert headers["ETag"] == first.etag and headers["Content-Type"] == "application/ocsp-response"
        assert {"Last-Modified", "Expires"} <= set(headers)
        later = first.get_headers(now + 7)
        assert later["Cache-Control"].startswith(f"max-age={first.next_update - now - 7},")
        assert later["ETag"] == headers["ETag"]
        assert headers["Cache-Control"].startswith(f"max-age={first.next_update - now},")  # its own copy

        clock.now += 10  # re-signed: the ready answer is replaced, not kept
        assert responder.presign("ac-personnes", serial_hex)
        second = responder.answer_for(issuer, PRESIGN_HASH, serial)
        assert second is not None and second is not first and second.this_update == first.this_update + 10

        responder.invalidate("ac-personnes", serial_hex)  # a status change: nothing ready is left
        assert responder.answer_for(issuer, PRESIGN_HASH, serial) is None
        assert (issuer.name, PRESIGN_HASH, serial) not in responder.ready

        # a drop racing the build (another thread, between the store read and the put): not kept
        assert responder.presign("ac-personnes", serial_hex)
        real = responder._cached

        def racing(*args: object) -> object:
            found = real(*args)  # type: ignore[arg-type]
            responder._dropped += 1
            return found

        monkeypatch.setattr(responder, "_cached", racing)
        assert responder.answer_for(issuer, PRESIGN_HASH, serial) is not None  # this request is answered
        assert (issuer.name, PRESIGN_HASH, serial) not in responder.ready  # but nothing stays ready
        monkeypatch.undo()

        third = responder.answer_for(issuer, PRESIGN_HASH, serial)
        assert third is not None and third.next_update is not None
        clock.now = third.next_update - 59  # less than a minute left: not served from here
        assert responder.answer_for(issuer, PRESIGN_HASH, serial) is None
    finally:
        hsm.close()
        registry.close()
