"""A million fuzzed inputs through the OCSP decoders and the responder's fast path (in process), and a
sample of them over HTTP against a served demo: 0 crashes (any exception but the precise refusal), 0 HTTP
500s. The fast sample of the same runs in `make test` (tests/faults/test_fuzz.py).

Inputs: mutations of well-formed requests (bits flipped, DER lengths broken, cut, grown, spliced) and
random bytes, for POST bodies and for base64 GET paths (percent-encoded, unpadded, '+' turned into ' ').
``--tiny``: 2,000 inputs in process, 100 over HTTP.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from bench.common import arguments, demo, on_free_ports, report, tiny_demo, wait_http
from directory.config import load_config
from directory.runtime import open_config_registry, open_hsm
from ocsp.request import Malformed, decode_get_path, parse_request
from ocsp.responder import OcspResponder, Outcome
from tests.faults.mutation import mutate
from tests.faults.test_fuzz import VALID

TOTAL = int(os.environ.get("BENCH_FUZZ_INPUTS", "1000000"))
HTTP_SAMPLE = int(os.environ.get("BENCH_FUZZ_HTTP", "20000"))
TINY = (2000, 100)  # inputs in process, over HTTP


def inputs(rng: random.Random, n: int):  # type: ignore[no-untyped-def]
    for i in range(n):
        kind = i % 4
        if kind == 3:
            yield "bytes", rng.randbytes(rng.randint(0, 300))
        else:
            data = mutate(rng.choice(VALID), rng, rounds=rng.randint(1, 6))
            if kind == 2:
                text = base64.b64encode(data).decode()
                style = rng.randrange(3)
                text = (urllib.parse.quote(text, safe="") if style == 0 else
                        text.rstrip("=").replace("+", " ") if style == 1 else "/" + text)
                yield "path", text
            else:
                yield "bytes", data


def in_process(config_path: Path, total: int = TOTAL) -> dict[str, int]:
    config = load_config(config_path)
    responder = OcspResponder(config, open_hsm(config), open_config_registry(config))
    counts = {"inputs": 0, "parsed": 0, "malformed": 0, "answered_from_cache_path": 0, "crashes": 0}
    rng = random.Random(1)
    started = time.monotonic()
    for kind, item in inputs(rng, total):
        counts["inputs"] += 1
        try:
            der = decode_get_path(item) if kind == "path" else item
            parse_request(der, 10)
            counts["parsed"] += 1
        except Malformed:
            counts["malformed"] += 1
            der = item if kind == "bytes" else b""
        except Exception as exc:  # a crash: reported with the input
            counts["crashes"] += 1
            print(f"CRASH {type(exc).__name__}: {exc!r} on {item!r}"[:500], file=sys.stderr)
            continue
        try:
            if isinstance(responder.from_cache(der), Outcome):
                counts["answered_from_cache_path"] += 1
        except Exception as exc:
            counts["crashes"] += 1
            print(f"CRASH in responder {type(exc).__name__}: {exc!r} on {item!r}"[:500], file=sys.stderr)
    elapsed = time.monotonic() - started
    counts["seconds"] = int(elapsed)
    counts["inputs_per_s"] = int(counts["inputs"] / max(elapsed, 1e-6))
    return counts


def over_http(config_path: Path, sample: int = HTTP_SAMPLE) -> dict[str, int]:
    text, base, _ = on_free_ports(config_path.read_text())
    config_path.write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "directory.cli", "serve", "--config", str(config_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    statuses: dict[str, int] = {}
    try:
        wait_http(base + "/readyz")
        rng = random.Random(2)
        for kind, item in inputs(rng, sample):
            if kind == "path":
                request = urllib.request.Request(f"{base}/ocsp/{urllib.parse.quote(item, safe='/%+=')}")
            else:
                request = urllib.request.Request(f"{base}/ocsp", data=item, method="POST",
                                                 headers={"Content-Type": "application/ocsp-request"})
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    status = r.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            statuses[str(status)] = statuses.get(str(status), 0) + 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    statuses["tracebacks_in_log"] = err.decode().count("Traceback")
    return statuses


def main() -> int:
    args = arguments(__doc__).parse_args()
    total, sample = TINY if args.tiny else (TOTAL, HTTP_SAMPLE)
    directory = tiny_demo("ec") if args.tiny else demo("fuzz", "ec", 50)
    config = directory / "annuaire.toml"
    counts = in_process(config, total)
    statuses = over_http(config, sample)
    report({"in_process": counts, "over_http": statuses, "http_requests": sample,
            "crashes": counts["crashes"], "http_500": statuses.get("500", 0),
            "tracebacks_in_log": statuses["tracebacks_in_log"]}, args,
           [f"in process: {counts}", f"over HTTP ({sample} requests): {statuses}"])
    return 1 if counts["crashes"] or statuses.get("500") or statuses["tracebacks_in_log"] else 0


if __name__ == "__main__":
    sys.exit(main())
