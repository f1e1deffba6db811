"""Memory cannot be grown from outside. The OCSP caches that traffic fills keep only valid
requests for served issuers, are bounded in bytes (LRU), and charge each entry at least what it costs."""

from __future__ import annotations

import base64
import http.client
import json
import random
import re
import threading
import tracemalloc
from pathlib import Path
from urllib.parse import urlsplit

from asn1crypto import ocsp as aocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from directory.cert_id import issuer_hashes
from directory.config import load_config
from directory.runtime import open_config_registry, open_hsm
from ocsp.lru import ByteLru
from ocsp.responder import ANSWER_ENTRY_OVERHEAD, REQUEST_ENTRY_OVERHEAD, OcspResponder
from tests.served import serve


def test_lru_stays_within_its_bytes_and_evicts_least_recently_used() -> None:
    lru: ByteLru[str, int] = ByteLru(1000, overhead=100)
    for i in range(5):
        lru.put(f"k{i}", i, 100)  # 200 bytes each: five fit
    assert lru.bytes == 1000 and len(lru) == 5
    assert lru.get("k0") == 0  # now the most recently used
    lru.put("k5", 5, 100)
    assert "k1" not in lru and "k0" in lru and lru.bytes == 1000 and lru.evictions == 1
    lru.put("k5", 55, 300)  # replaced, charged anew (400): the least recently used (k2) makes room
    assert lru.get("k5") == 55 and "k2" not in lru and lru.bytes == 1000
    lru.put("huge", 0, 5000)  # larger than the whole cache: not kept, nothing evicted for it
    assert "huge" not in lru and len(lru) == 4
    assert lru.pop("k0") == 0 and lru.pop("k0") is None
    assert set(lru._items) == {"k3", "k4", "k5"} and lru.bytes == 200 + 200 + 400


def test_lru_accounting_holds_under_threads() -> None:
    lru: ByteLru[int, int] = ByteLru(50_000, overhead=50)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(20_000):
            key = rng.randrange(2000)
            if rng.random() < 0.2:
                lru.pop(key)
            elif rng.random() < 0.5:
                lru.put(key, key, rng.randrange(200))
            else:
                lru.get(key)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lru.bytes <= 50_000
    assert lru.bytes == sum(cost for _, cost in lru._items.values())


def _measured_overhead(entries: int, answer: bool) -> float:
    """Bytes per entry that tracemalloc sees beyond the variable part the caller charges."""
    rng = random.Random(entries)
    issuer = object()
    tracemalloc.start()
    lru: ByteLru[object, object] = ByteLru(1 << 40, 0)
    before, charged = tracemalloc.get_traced_memory()[0], 0
    for i in range(entries):
        serial = rng.getrandbits(159) | (1 << 158)  # 20-octet serials: the largest
        if answer:
            signed = rng.randbytes(450)
            lru.put(("ac-personnes", "sha256", serial), (signed, 1_800_000_000 + i, 1_900_000_000 + i), len(signed))
            charged += len(signed)
        else:
            path = "/" + base64.b64encode(rng.randbytes(83)).decode()
            lru.put(path, (issuer, "sha1", serial), len(path))
            charged += len(path)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return (used - charged) / entries


def test_entry_charges_are_upper_bounds_of_what_entries_cost() -> None:
    # counts on both sides of the dict's resizes (its table is the larger part of the overhead)
    for entries in (1000, 5462, 10923, 21846, 43691):
        assert _measured_overhead(entries, answer=False) <= REQUEST_ENTRY_OVERHEAD
        assert _measured_overhead(entries, answer=True) <= ANSWER_ENTRY_OVERHEAD


def _request(issuer: x509.Certificate, serial: int, nonce: bytes | None = None, twice: bool = False) -> bytes:
    algorithm = hashes.SHA1()
    name_hash, key_hash = issuer_hashes(issuer, algorithm.name)
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, serial, algorithm)
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    der = builder.build().public_bytes(serialization.Encoding.DER)
    if twice:  # two CertIDs: cryptography's builder takes one, so splice the list
        item = aocsp.OCSPRequest.load(der)["tbs_request"]["request_list"][0]
        der = aocsp.OCSPRequest({"tbs_request": {"request_list": [item, item]}}).dump()
    return der


def test_only_valid_requests_for_served_issuers_are_remembered(private_config: Path, demo_token: Path) -> None:
    config = load_config(private_config)
    responder = OcspResponder(config, open_hsm(config), open_config_registry(config))
    served = x509.load_pem_x509_certificate((demo_token / "ca" / "ac-personnes.pem").read_bytes())
    root = x509.load_pem_x509_certificate((demo_token / "ca" / "ac-racine.pem").read_bytes())  # no [issuers.ocsp]
    rng = random.Random(4)
    for _ in range(300):
        junk = rng.randbytes(rng.randint(1, 6000))
        responder.from_cache(junk)
        responder.from_cache("/" + base64.b64encode(junk).decode())
    responder.from_cache(_request(root, 5))  # valid, but an issuer not served here
    responder.from_cache(_request(served, 5, nonce=b"n" * 16))  # echoed nonce: an answer of its own
    responder.from_cache(_request(served, 5, twice=True))  # several CertIDs: signed live each time
    assert len(responder.requests) == 0 and responder.requests.bytes == 0
    valid = _request(served, 5)
    responder.from_cache(valid)
    responder.from_cache("/" + base64.b64encode(valid).decode())
    assert len(responder.requests) == 2


def _rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def test_a_flood_of_junk_and_of_valid_requests_does_not_grow_the_served_process(demo: Path) -> None:
    budget = 256 * 1024
    # one process: the one measured is the one parsing (with serving processes, each bounds its own cache the
    # same way, and the main process is sent the values of the requests they parsed, not their bytes)
    text = re.sub(r"(?m)^workers = \d+\n", "", demo.read_text())
    demo.write_text(text.replace(
        "[http]\n", '[http]\nworkers = 1\nocsp_request_cache = "256KiB"\nocsp_answer_cache = "256KiB"\n', 1))
    issuer = x509.load_pem_x509_certificate((demo.parent / "ca" / "ac-personnes.pem").read_bytes())
    rng = random.Random(13)
    with serve(demo) as served:
        url = urlsplit(served.base)
        conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)

        def get(path: str) -> int:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return response.status

        def junk() -> str:  # ~5.5 KB of decodable base64 (the request line limit is 8 KiB)
            return "/ocsp/" + base64.b64encode(rng.randbytes(5500)).decode()

        for _ in range(300):  # the allocator's arenas settle first
            get(junk())
        before = _rss(served.proc.pid)
        for _ in range(4000):
            assert get(junk()) == 200
        for _ in range(1200):  # valid, for a served issuer, every one different: cached until the bound
            path = base64.b64encode(_request(issuer, rng.getrandbits(120))).decode()
            assert get("/ocsp/" + path) == 200
        grown = _rss(served.proc.pid) - before
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
    held = float(re.search(r'annuaire_ocsp_cache_bytes\{cache="requests"\} (\S+)', metrics).group(1))  # type: ignore[union-attr]
    evicted = float(re.search(r'annuaire_ocsp_cache_evictions_total\{cache="requests"\} (\S+)',  # type: ignore[union-attr]
                              metrics).group(1))
    assert 0 < held <= budget and evicted > 0, (held, evicted)
    # before: every junk path and its DER were kept (~13 KB each: ~50 MB here); now nothing of them is
    assert grown < 16 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB"
    print(json.dumps({"rss_growth_bytes": grown, "request_cache_bytes": held, "evictions": evicted}))


def test_cache_sizes_are_configured_under_http(private_config: Path) -> None:
    from directory.config import ConfigError

    text = private_config.read_text()
    assert load_config(private_config).http.ocsp_request_cache == 16 * 1024 * 1024  # the defaults
    assert load_config(private_config).http.ocsp_answer_cache == 32 * 1024 * 1024
    private_config.write_text(text.replace("[http]\n", '[http]\nocsp_request_cache = "512KiB"\n'
                                                       "ocsp_answer_cache = 1000000\n", 1))
    http_config = load_config(private_config).http
    assert (http_config.ocsp_request_cache, http_config.ocsp_answer_cache) == (512 * 1024, 1_000_000)
    for bad in ('"16MB"', "-1", '"1.5MiB"', "true", '"128GiB"'):
        private_config.write_text(text.replace("[http]\n", f"[http]\nocsp_request_cache = {bad}\n", 1))
        try:
            load_config(private_config)
        except ConfigError as exc:
            assert "http.ocsp_request_cache" in str(exc), exc
        else:
            raise AssertionError(f"{bad} accepted")
