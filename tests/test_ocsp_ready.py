"""Answers ready to send (``OcspResponder.answer_for``): built once, never outliving the answer they were built
from (a drop or replacement of the stored answer, even one made behind this process's back: another process
writing the shared store, a racing thread), expired a minute before nextUpdate, bounded; their RFC 5019 GET
headers follow the clock."""

from __future__ import annotations

from ocsp.lookup import READY_CACHE
from ocsp.responder import PRESIGN_HASH
from tests.conftest import SigningResponder


def test_ready_answers_follow_the_stored_ones(signing_responder: SigningResponder) -> None:
    clock, responder, cert = signing_responder.clock, signing_responder.responder, signing_responder.cert
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
    assert (issuer.name, serial) not in responder.ready

    # the store changed behind this process's back (another process's write to the shared store, a racing
    # thread): the ready copy is checked against the store at each look-up, never served past it
    assert responder.presign("ac-personnes", serial_hex)
    ready = responder.answer_for(issuer, PRESIGN_HASH, serial)
    assert ready is not None and (issuer.name, serial) in responder.ready
    responder.store.pop("ac-personnes", serial)  # not through invalidate(): no ready copy dropped
    assert responder.answer_for(issuer, PRESIGN_HASH, serial) is None
    assert (issuer.name, serial) not in responder.ready
    assert responder.presign("ac-personnes", serial_hex)
    again = responder.answer_for(issuer, PRESIGN_HASH, serial)
    assert again is not None and again is not ready
    clock.now += 5  # a re-signed answer written straight into the store replaces the ready copy
    signed, this_update, next_update, _ = responder._sign(issuer, (issuer.cert_id(PRESIGN_HASH, serial),), None)
    responder.store.put("ac-personnes", serial, signed, this_update, next_update)
    newer = responder.answer_for(issuer, PRESIGN_HASH, serial)
    assert newer is not None and newer is not again and newer.this_update == this_update == again.this_update + 5

    third = responder.answer_for(issuer, PRESIGN_HASH, serial)
    assert third is not None and third.next_update is not None
    clock.now = third.next_update - 59  # less than a minute left: not served from here
    assert responder.answer_for(issuer, PRESIGN_HASH, serial) is None
