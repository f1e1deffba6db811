"""Where pre-signed answers live (ocsp/store.py) and which persisted ones are reloaded.

- The LMDB store the main process writes is read by another process (a new interpreter, as a serving
  process is) with each change visible at its next look-up, and gives the very bytes the memory store gives.
- Persisted answers signed by another responder key than the configured one (the responder certificate
  changed) are not reloaded at start: the certificate is signed again.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from directory.config import load_config
from directory.runtime import open_config_registry, open_hsm
from ocsp.responder import OcspResponder
from ocsp.store import LmdbStore, MemoryStore
from tests.conftest import ROOT

READER = """
import sys
from pathlib import Path
from ocsp.store import LmdbReader
reader = LmdbReader(Path(sys.argv[1]), {"ca": b"CERTS"})
for line in sys.stdin:
    hit = reader.get("ca", int(line))
    print("none" if hit is None else f"{hit[0].hex()} {hit[1]} {hit[2]} {hit[3].hex()}", flush=True)
"""


def test_lmdb_store_changes_are_seen_by_a_reading_process_at_once(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "answers.lmdb", {"ca": b"CERTS"})
    memory = MemoryStore({"ca": b"CERTS"})
    signed = bytes(range(40)) * 3
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path / "answers.lmdb")], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert reader.stdin is not None and reader.stdout is not None

    def ask(serial: int) -> str:
        reader.stdin.write(f"{serial}\n")  # type: ignore[union-attr]
        reader.stdin.flush()  # type: ignore[union-attr]
        return reader.stdout.readline().strip()  # type: ignore[union-attr]

    try:
        assert ask(0x1234) == "none"
        store.put("ca", 0x1234, signed, 100, 200)
        memory.put("ca", 0x1234, signed, 100, 200)
        body, this_update, next_update, tail = memory.get("ca", 0x1234)  # type: ignore[misc]
        assert ask(0x1234) == f"{body.hex()} {this_update} {next_update} {tail.hex()}"
        assert store.get("ca", 0x1234) == memory.get("ca", 0x1234)
        assert store.counts() == {"ca": 1} and store.window("ca", 0x1234) == (100, 200)
        store.put("ca", 0x1234, signed[::-1], 300, 400)  # re-signed: replaced, still one
        assert ask(0x1234).split()[1:3] == ["300", "400"] and store.counts() == {"ca": 1}
        store.pop("ca", 0x1234)
        assert ask(0x1234) == "none" and store.counts() == {"ca": 0}
        assert ask(-5) == "none"  # whatever a request names, a look-up is only a look-up
    finally:
        reader.stdin.close()
        reader.wait(timeout=10)
        store.close()


def _without_delegation(path: Path) -> Path:
    """The same configuration, ac-personnes answering with its own key instead of its OCSP responder."""
    text = path.read_text()
    start = text.index("[issuers.ocsp]\nsigner_certificate")
    end = text.index('signer_key_label = "ocsp-ac-personnes"\n') + len('signer_key_label = "ocsp-ac-personnes"\n')
    changed = path.with_name("changed.toml")
    changed.write_text(text[:start] + "[issuers.ocsp]\n" + text[end:])
    return changed


def test_answers_of_a_former_responder_key_are_not_reloaded(private_config: Path, tmp_path: Path) -> None:
    from directory.ingest.importer import Importer
    from directory.runtime import known_issuers

    config = load_config(private_config)
    changed = load_config(_without_delegation(private_config))
    assert changed.issuer("ac-personnes").ocsp.signer_certificate is None  # type: ignore[union-attr]
    registry = open_config_registry(config)
    cert = config.issuer("ac-personnes").ocsp.signer_certificate  # type: ignore[union-attr]
    Importer(registry, known_issuers(config)).import_der(cert.public_bytes(serialization.Encoding.DER))
    serial_hex = format(cert.serial_number, "x")
    hsm = open_hsm(config)

    def later() -> float:  # answers signed after the import's second: the registry reloads only those
        return time.time() + 2

    try:
        first = OcspResponder(config, hsm, registry, later)
        assert first.presign("ac-personnes", serial_hex)
        first.flush()
        assert OcspResponder(config, hsm, registry, later).load_persisted() == 1
        # the responder changed: what the former one signed is not served, the certificate is signed again
        second = OcspResponder(changed, hsm, registry, later)
        assert second.load_persisted() == 0
        assert second.missing("ac-personnes") == [serial_hex]
        assert second.presign("ac-personnes", serial_hex)
        second.flush()
        assert OcspResponder(changed, hsm, registry, later).load_persisted() == 1
        # and back: the delegated responder does not take the CA's answers either
        assert OcspResponder(config, hsm, registry, later).load_persisted() == 0
        # the shared store, filled from the same rows, gives the memory store's bytes
        shared = OcspResponder(changed, hsm, registry, later, store=functools.partial(LmdbStore, tmp_path / "a.lmdb"))
        memory = OcspResponder(changed, hsm, registry, later)
        assert shared.load_persisted() == memory.load_persisted() == 1
        issuer = memory.issuers["ac-personnes"]
        one, two = (r.answer_for(issuer, "sha1", cert.serial_number) for r in (shared, memory))
        assert one is not None and two is not None
        assert (one.body, one.this_update, one.next_update, one.etag) == (
            two.body, two.this_update, two.next_update, two.etag)
        assert shared.presigned_counts()["ac-personnes"] == 1
        # an answer ready to send is never served once the store dropped or replaced it
        assert shared.answer_for(issuer, "sha1", cert.serial_number) is one  # the same object, checked
        shared.invalidate("ac-personnes", serial_hex)
        assert shared.answer_for(issuer, "sha1", cert.serial_number) is None
        assert shared.presign("ac-personnes", serial_hex)
        again = shared.answer_for(issuer, "sha1", cert.serial_number)
        assert again is not None and again is not one  # built again from what the store holds now
        shared.store.close()
    finally:
        hsm.close()
