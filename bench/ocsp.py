"""OCSP throughput and latency: our responder vs `openssl ocsp -index ... -port`, and vs a bare aiohttp handler.

Same machine, same run, load from `wrk` in a second process (2 threads, 16 connections, 10 s per run):
- pre-signed path (single CertID, SHA-1, no nonce, GET) with keep-alive and with a new connection per
  request (`Connection: close`), against 100,000 RSA-2048 demo certificates;
- `openssl ocsp -index` (RSA-2048 responder key, `-multi 2`: its best mode) on the same certificates;
- a bare aiohttp handler returning 1.5 KB of fixed bytes: the ceiling of this stack on this machine;
- the nonce path (a different nonce on every request: signed live) vs the raw HSM signature rate;
- p99 latency at 80% of the pre-signed saturation (wrk's per-connection delay);
- resident memory of the service holding 1,000,000 pre-signed responses.

The pre-signed answer path side by side with a bare aiohttp handler and ``cfssl ocspserve`` on the very same
response bytes (POST and GET, asyncio's loop and uvloop) is ``bench.ocsp_answer`` (``make bench`` runs it
next); ``--tiny [--json]`` (``make test``) runs that comparison at its tiny size.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from bench import ocsp_answer
from bench.common import OUT, demo, fill_presigned, free_port, on_free_ports, wait_http

N_CERTS = int(os.environ.get("BENCH_OCSP_CERTS", "100000"))
RSS_CERTS = int(os.environ.get("BENCH_OCSP_RSS_CERTS", "1000000"))  # 0: skip the memory run
DURATION = os.environ.get("BENCH_OCSP_DURATION", "10s")
SAMPLE = 20000
LUA = """
local paths = {}
for line in io.lines(os.getenv("PATHS")) do paths[#paths + 1] = line end
local close = os.getenv("CLOSE") == "1"
local d = tonumber(os.getenv("DELAY_MS") or "0")
math.randomseed(os.time() + math.floor(os.clock() * 1000000))
request = function()
  local p = paths[math.random(#paths)]
  if close then return wrk.format("GET", p, {["Connection"] = "close"}) end
  return wrk.format("GET", p)
end
if d > 0 then delay = function() return d end end
"""
BARE = """
import sys
from aiohttp import web
BODY = b"x" * 1500
async def handler(request):
    return web.Response(body=BODY, content_type="application/ocsp-response")
app = web.Application()
app.router.add_get("/{tail:.*}", handler)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def wrk(base: str, paths: Path, close: bool = False, delay_ms: float = 0) -> dict[str, float]:
    script = OUT / "ocsp.lua"
    script.write_text(LUA)
    env = {**os.environ, "PATHS": str(paths), "CLOSE": "1" if close else "0", "DELAY_MS": str(delay_ms)}
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{DURATION}", "--latency", "-s", str(script), base], env=env,
                         capture_output=True, text=True, timeout=300).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk against {base} printed no rate:\n{out[-2000:]}")
    rate = float(found.group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    factor = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result = {"rps": rate, "p99_ms": float(p99.group(1)) * factor[p99.group(2)] if p99 else float("nan"),
              "non2xx": float(errors.group(1)) if errors else 0.0,
              "socket_errors": float(sum(int(x) for x in sock.groups())) if sock else 0.0}
    print(f"{base} close={close} delay={delay_ms:.2f}: {result}", file=sys.stderr)
    return result


def request_paths(demo_dir: Path, prefix: str, nonce: bool, count: int) -> Path:
    """``request_lines`` in a file under bench/out (for wrk)."""
    lines = request_lines(demo_dir, prefix, nonce, count)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"paths-{prefix.strip('/').replace('/', '_') or 'root'}-{'nonce' if nonce else 'plain'}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def request_lines(demo_dir: Path, prefix: str, nonce: bool, count: int) -> list[str]:
    """GET paths of single-CertID requests for ``count`` random ac-personnes certificates of a demo."""
    manifest = json.loads((demo_dir / "certs" / "manifest.json").read_text())
    issuers = {name: x509.load_pem_x509_certificate((demo_dir / "ca" / f"{name}.pem").read_bytes())
               for name in ("ac-personnes", "ac-structures")}
    manifest = [m for m in manifest if m["issuer"] == "ac-personnes"]  # the CA openssl is configured for
    rng = random.Random(7)
    lines = []
    for entry in rng.sample(manifest, min(count, len(manifest))):
        cert = x509.load_pem_x509_certificate((demo_dir / "certs" / entry["file"]).read_bytes())
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuers[entry["issuer"]], hashes.SHA1())
        if nonce:
            builder = builder.add_extension(x509.OCSPNonce(rng.randbytes(16)), critical=False)
        der = builder.build().public_bytes(serialization.Encoding.DER)
        lines.append(prefix + urllib.parse.quote(base64.b64encode(der).decode(), safe=""))
    return lines


def openssl_index(demo_dir: Path) -> Path:
    manifest = json.loads((demo_dir / "certs" / "manifest.json").read_text())
    work = OUT / "openssl-ocsp"
    work.mkdir(parents=True, exist_ok=True)
    reasons = {None: "unspecified", "privilegeWithdrawn": "unspecified"}  # openssl knows no privilegeWithdrawn
    lines = []
    for entry in manifest:
        if entry["issuer"] != "ac-personnes":
            continue
        serial = entry["serial_hex"].upper()
        serial = serial if len(serial) % 2 == 0 else "0" + serial
        status = "V" if entry["status"] == "good" else "R"
        rev = f"{time.strftime('%y%m%d%H%M%SZ', time.gmtime(time.time() - 3600))}," \
              f"{reasons.get(entry['reason'], entry['reason'])}" if status == "R" else ""
        lines.append(f"{status}\t301231000000Z\t{rev}\t{serial}\tunknown\t/CN=x")
    (work / "index.txt").write_text("\n".join(lines) + "\n")
    (work / "index.txt.attr").write_text("unique_subject = no\n")  # every line has the same dummy subject
    key, cert = work / "responder.key", work / "responder.pem"
    if not key.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "30", "-subj", "/CN=openssl bench responder"], check=True,
                       capture_output=True)
    return work


def rss_with(certs: int) -> float:
    """Peak RSS (MB) of the service once it holds ``certs`` pre-signed responses loaded from the registry."""
    directory = demo("ocsp-rss", "rsa", 0)
    fill_presigned(directory, certs)  # realistic answers: canonical CertID, RSA-2048-sized signature
    config = directory / "annuaire.toml"
    text, base, _ = on_free_ports(config.read_text())
    config.write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "directory.cli", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(base + "/readyz")
        time.sleep(5)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> int:
    if "--tiny" in sys.argv[1:]:
        return ocsp_answer.main(sys.argv[1:])
    demo_dir = demo("ocsp-rsa", "rsa", N_CERTS)
    results: dict[str, dict[str, float]] = {}
    ours_paths = request_paths(demo_dir, "/ocsp/", False, SAMPLE)
    nonce_paths = request_paths(demo_dir, "/ocsp/", True, SAMPLE)
    openssl_paths = request_paths(demo_dir, "/", False, SAMPLE)

    config = demo_dir / "annuaire.toml"
    text, base, _ = on_free_ports(config.read_text())
    config.write_text(text)
    service = subprocess.Popen([sys.executable, "-m", "directory.cli", "serve", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(base + "/readyz")
        db = sqlite3.connect(demo_dir / "data" / "registry.sqlite3")
        while db.execute("SELECT COUNT(*) FROM ocsp_responses").fetchone()[0] < N_CERTS:
            time.sleep(2)  # first run: pre-signing 100,000 responses
        db.close()
        time.sleep(3)
        for _ in range(2):  # warm-up: the GET-path and request-parse caches fill from traffic, as in service
            wrk(base, ours_paths)
        results["ours presigned keep-alive"] = wrk(base, ours_paths)
        results["ours presigned new connection"] = wrk(base, ours_paths, close=True)
        results["ours nonce (live) keep-alive"] = wrk(base, nonce_paths)
        saturation = results["ours presigned keep-alive"]["rps"]
        delay = 16 * 1000 / (0.8 * saturation)
        results["ours presigned at 80% load"] = wrk(base, ours_paths, delay_ms=delay)
        rss_100k = int(re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{service.pid}/status").read_text())
                       .group(1)) / 1024  # type: ignore[union-attr]
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)

    bare_port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)])
    try:
        wait_http(f"http://127.0.0.1:{bare_port}/x")
        results["bare aiohttp keep-alive"] = wrk(f"http://127.0.0.1:{bare_port}", ours_paths)
        results["bare aiohttp new connection"] = wrk(f"http://127.0.0.1:{bare_port}", ours_paths, close=True)
    finally:
        bare.terminate()
        bare.wait()

    work = openssl_index(demo_dir)
    oport = free_port()
    openssl = subprocess.Popen(["openssl", "ocsp", "-index", str(work / "index.txt"), "-port", str(oport), "-rsigner",
                                str(work / "responder.pem"), "-rkey", str(work / "responder.key"), "-CA",
                                str(demo_dir / "ca" / "ac-personnes.pem"), "-ndays", "4", "-multi", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # No probing: an empty connection upsets `openssl ocsp -multi` (it stops answering); it binds at once.
        time.sleep(3)
        results["openssl ocsp -multi 2 (new connection)"] = wrk(f"http://127.0.0.1:{oport}", openssl_paths, close=True)
    finally:
        # -multi forks workers that outlive their parent: stop them first (a new session stops it listening)
        children = subprocess.run(["pgrep", "-P", str(openssl.pid)], capture_output=True, text=True).stdout.split()
        for child in children:
            os.kill(int(child), signal.SIGTERM)
        openssl.terminate()
        openssl.wait()

    import bench.hsm as hsm_bench

    hsm_bench.ROUNDS, hsm_bench.DURATION = 1, 3.0
    raw = hsm_bench.bench(demo_dir, "ocsp-ac-personnes", "rsa")
    raw_rate = max(row[2] for row in raw)  # direct python-pkcs11, best of 1 and 2 threads
    rss_1m = rss_with(RSS_CERTS) if RSS_CERTS else float("nan")
    print(f"RSS with {RSS_CERTS:,} pre-signed responses: {rss_1m:.0f} MB", file=sys.stderr)
    if results["openssl ocsp -multi 2 (new connection)"]["rps"] <= 0:
        raise RuntimeError("openssl ocsp answered nothing: the comparison is void")

    print("| run | req/s | p99 ms | non-2xx | socket errors |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['rps']:,.0f} | {r['p99_ms']:.2f} | {r['non2xx']:.0f} | {r['socket_errors']:.0f} |")
    ka, nc = results["ours presigned keep-alive"]["rps"], results["ours presigned new connection"]["rps"]
    ossl = results["openssl ocsp -multi 2 (new connection)"]["rps"]
    print()
    print(f"- pre-signed, best mode vs openssl's best mode: {ka:,.0f} / {ossl:,.0f} = {ka / ossl:.1f}×")
    print(f"- pre-signed, new connection each vs openssl: {nc / ossl:.1f}×")
    print(f"- pre-signed vs bare aiohttp: keep-alive {ka / results['bare aiohttp keep-alive']['rps']:.0%}, "
          f"new connection {nc / results['bare aiohttp new connection']['rps']:.0%}")
    nonce = results["ours nonce (live) keep-alive"]["rps"]
    print(f"- nonce path vs raw HSM signatures (RSA-2048, direct python-pkcs11, {raw_rate:,.0f}/s): "
          f"{nonce / raw_rate:.0%}")
    print(f"- p99 at 80% of saturation: {results['ours presigned at 80% load']['p99_ms']:.2f} ms")
    print(f"- RSS with {N_CERTS:,} certificates: {rss_100k:.0f} MB; with {RSS_CERTS:,} pre-signed responses: "
          f"{rss_1m:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
