"""The nonce (live-signed) OCSP path against the raw HSM signing rate, measured in the same run.

For each OCSP signer key type of the demo (RSA-2048; P-256 with ``--key-type ec``):
- raw: python-pkcs11 ``C_Sign`` on the very token and key the service's OCSP signer uses, in as many
  threads as the signer has sessions (``[hsm] max_concurrent``), one session per thread, the same
  mechanisms as ``bench/hsm.py``'s "direct" (``SHA256_RSA_PKCS``; host SHA-256 + raw ``ECDSA``), over a
  message the size of a ResponseData;
- nonce: ``wrk`` POSTing single-CertID requests to ``annuaire serve``, each with a nonce of its own (a
  counter per wrk thread), so every answer is signed live; answers that are not ``successful`` are counted
  by the Lua script and reported (they must be 0).
Raw and nonce runs alternate over several rounds, medians kept. Before the load, a few answers are checked
with ``cryptography``: nonce echoed, status good, signature valid under the responder certificate.

    python -m bench.ocsp_nonce [--key-type rsa|ec|both] [--rounds 3] [--duration 5] [--json] [--tiny]

The last line (``--json``: the only output) is a JSON object whose ``rows`` hold one object per key type,
with ``ratio`` = nonce answers/s ÷ raw signatures/s, and ``cpu_ratio`` = CPU time of a raw signature ÷ CPU
time of a nonce answer (the service's and wrk's): what ``ratio`` tends to when both sides saturate the
cores, a figure that other processes' load on a shared machine distorts much less than the rates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509 import ocsp

from bench.common import OUT, TINY_CERTS, arguments, demo, free_port, report, tree_cpu_seconds, wait_http
from directory.hsm.signer import HsmSettings, HsmSigner

PLACEHOLDER = b"\xa5NONCE-PLACEHOL\xa5"  # 16 octets, replaced in every request by a fresh nonce
LUA = r"""
local templates = {}
for line in io.lines(os.getenv("TEMPLATES")) do
  local pre, post = line:match("^(%x*) (%x*)$")
  local function unhex(h) return (h:gsub("%x%x", function(c) return string.char(tonumber(c, 16)) end)) end
  templates[#templates + 1] = {unhex(pre), unhex(post)}
end
local next_id = 0
local threads = {}
setup = function(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  threads[#threads + 1] = thread
end
init = function(args)
  counter = 0
  bad = 0
  run = string.format("%06x", math.random(0, 0xffffff) + (os.time() % 251))
end
request = function()
  counter = counter + 1
  local t = templates[counter % #templates + 1]
  local nonce = string.format("%02x", id) .. run .. string.format("%08x", counter)
  return wrk.format("POST", "/ocsp", {["Content-Type"] = "application/ocsp-request"}, t[1] .. nonce .. t[2])
end
response = function(status, headers, body)
  -- OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED successful(0), ... }: 30 82 xx xx 0a 01 00
  if status ~= 200 or body:sub(5, 7) ~= "\10\1\0" then bad = bad + 1 end
end
done = function(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("bad") end
  io.write(string.format("NOT-SUCCESSFUL %d\n", total))
end
"""


def serve_config(demo_dir: Path, workers: int | None = None) -> tuple[Path, int]:
    """The demo's config on free ports (HTTP, managed slapd, admin), so parallel runs do not collide;
    ``workers``: ``[http] workers`` (None: the service's default, one per core)."""
    config = demo_dir / "annuaire.toml"
    port, ldap_port, admin_port = free_port(), free_port(), free_port()
    text = re.sub(r"(?m)^workers = \d+\n", "", config.read_text())
    listen = f'listen = "127.0.0.1:{port}"' + (f"\nworkers = {workers}" if workers else "")
    text = re.sub(r'listen = "127\.0\.0\.1:\d+"', listen, text, count=1)
    text = re.sub(r'base_url = "http://127\.0\.0\.1:\d+"', f'base_url = "http://127.0.0.1:{port}"', text)
    text = re.sub(r'(\[admin\]\nlisten = )"127\.0\.0\.1:\d+"', rf'\1"127.0.0.1:{admin_port}"', text)
    config.write_text(re.sub(r'"ldap://127\.0\.0\.1:\d+"', f'"ldap://127.0.0.1:{ldap_port}"', text))
    return config, port


def setting(config: Path, name: str, default: str) -> str:
    found = re.search(rf"^{name}\s*=\s*(\S+)", config.read_text(), re.M)
    return found.group(1).strip('"') if found else default


def requests(demo_dir: Path, count: int) -> list[tuple[bytes, bytes]]:
    """(DER before the nonce, DER after it) of single-CertID SHA-1 requests for ac-personnes certificates."""
    with sqlite3.connect(demo_dir / "data" / "registry.sqlite3") as db:  # good now (other benches revoke some)
        good = {row[0] for row in db.execute("SELECT c.serial_hex FROM certificates c JOIN issuers i ON"
                                             " i.id = c.issuer_id WHERE i.name = 'ac-personnes' AND c.status = 'good'")}
    manifest = [m for m in json.loads((demo_dir / "certs" / "manifest.json").read_text())
                if m["issuer"] == "ac-personnes" and m["serial_hex"] in good]
    issuer = x509.load_pem_x509_certificate((demo_dir / "ca" / "ac-personnes.pem").read_bytes())
    out = []
    for entry in manifest[:count]:
        cert = x509.load_pem_x509_certificate((demo_dir / "certs" / entry["file"]).read_bytes())
        der = (ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
               .add_extension(x509.OCSPNonce(PLACEHOLDER), critical=False).build()
               .public_bytes(serialization.Encoding.DER))
        at = der.index(PLACEHOLDER)
        out.append((der[:at], der[at + len(PLACEHOLDER):]))
    if not out:
        raise RuntimeError(f"{demo_dir}: no good ac-personnes certificate to ask about")
    return out


def check_answers(base: str, templates: list[tuple[bytes, bytes]], responder: x509.Certificate) -> int:
    """Ask a few nonce requests and verify each answer as a client would; returns how many were checked."""
    key = responder.public_key()
    for i, (pre, post) in enumerate(templates[:5]):
        nonce = os.urandom(16)
        req = urllib.request.Request(base + "/ocsp", data=pre + nonce + post, method="POST",
                                     headers={"Content-Type": "application/ocsp-request"})
        with urllib.request.urlopen(req, timeout=30) as answer:
            body = answer.read()
            assert "no-store" in answer.headers["Cache-Control"], answer.headers
        parsed = ocsp.load_der_ocsp_response(body)
        assert parsed.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, i
        assert parsed.certificate_status == ocsp.OCSPCertStatus.GOOD, i
        assert parsed.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce, i
        assert parsed.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(key).digest
        data, sig, algo = parsed.tbs_response_bytes, parsed.signature, parsed.signature_hash_algorithm
        assert algo is not None
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, data, ec.ECDSA(algo))
        else:
            key.verify(sig, data, padding.PKCS1v15(), algo)  # type: ignore[union-attr]
    return min(5, len(templates))


class Raw:
    """python-pkcs11 alone on the service's token and key, as ``bench/hsm.py``'s "direct" (same module setup)."""

    def __init__(self, demo_dir: Path, label: str, kind: str) -> None:
        pin = (demo_dir / "hsm" / "pin").read_text().strip()
        self.hsm = HsmSigner(HsmSettings("/usr/lib/softhsm/libsofthsm2.so", "annuaire-demo", pin, 2,
                                         softhsm2_conf=str(demo_dir / "hsm" / "softhsm2.conf")))
        cert = x509.load_pem_x509_certificate((demo_dir / "ca" / f"{label}.pem").read_bytes())
        self.hsm.key(label, cert).sign(b"log in")  # login state is per application: every session is logged in
        self.token = self.hsm._module.lib.get_token(token_label="annuaire-demo")
        self.label, self.kind = label, kind

    def rate(self, threads: int, duration: float, size: int) -> float:
        """Signatures/s over ``duration`` seconds in ``threads`` threads, one session each."""
        message = b"r" * size
        counts = [0] * threads
        barrier = threading.Barrier(threads + 1)
        stop = [time.monotonic() + 3600]

        def run(i: int) -> None:
            with self.token.open() as session:
                key = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=self.label)
                barrier.wait()
                n = 0
                while time.monotonic() < stop[0]:
                    if self.kind == "rsa":
                        key.sign(message, mechanism=pkcs11.Mechanism.SHA256_RSA_PKCS)
                    else:
                        key.sign(hashlib.sha256(message).digest(), mechanism=pkcs11.Mechanism.ECDSA)
                    n += 1
                counts[i] = n

        workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for t in workers:
            t.start()
        barrier.wait()
        start, cpu = time.monotonic(), time.process_time()
        stop[0] = start + duration
        for t in workers:
            t.join()
        self.cpu_per_sig = (time.process_time() - cpu) / max(1, sum(counts))
        return sum(counts) / (time.monotonic() - start)

    def close(self) -> None:
        self.hsm.close()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def nonce_rate(base: str, templates: Path, duration: float, connections: int,
               pid: int) -> tuple[float, int, float, float]:
    """(answers/s, answers that were not ``successful``, service CPU s per answer, wrk CPU s per answer)."""
    script = OUT / "ocsp_nonce.lua"
    script.write_text(LUA)
    service_cpu, wrk_cpu = tree_cpu_seconds(pid), children_cpu()
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(duration))}s", "-s", str(script), base],
                         env={**os.environ, "TEMPLATES": str(templates)}, capture_output=True, text=True,
                         timeout=duration + 120)
    service_cpu, wrk_cpu = tree_cpu_seconds(pid) - service_cpu, children_cpu() - wrk_cpu
    total = re.search(r"(\d+) requests in", out.stdout)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    bad = re.search(r"NOT-SUCCESSFUL (\d+)", out.stdout)
    if rate is None or bad is None or total is None:
        raise RuntimeError(f"wrk printed no rate:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    n = max(1, int(total.group(1)))
    failed = int(bad.group(1)) + (int(errors.group(1)) if errors else 0)
    return float(rate.group(1)), failed, service_cpu / n, wrk_cpu / n


def presigned(demo_dir: Path) -> int:
    with sqlite3.connect(demo_dir / "data" / "registry.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM ocsp_responses").fetchone()[0]


def bench_key(kind: str, args: argparse.Namespace) -> dict[str, object]:
    # tiny: a demo of its own, not the one the other tiny runs share (they revoke its certificates as they go)
    demo_dir = demo(f"tiny-nonce-{kind}", kind, TINY_CERTS) if args.tiny else demo(f"nonce-{kind}", kind, args.certs)
    config, port = serve_config(demo_dir, args.workers)
    threads = int(setting(config, "max_concurrent", "2"))
    templates = requests(demo_dir, 20)
    lines = OUT / f"nonce-templates-{kind}.txt"
    lines.write_text("".join(f"{pre.hex()} {post.hex()}\n" for pre, post in templates))
    responder = x509.load_pem_x509_certificate((demo_dir / "ca" / "ocsp-ac-personnes.pem").read_bytes())
    service = subprocess.Popen([sys.executable, "-m", "directory.cli", "serve", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/readyz", 120)
        deadline = time.monotonic() + 120
        while presigned(demo_dir) < args.certs and time.monotonic() < deadline:
            time.sleep(0.5)  # first start: let the pre-signing finish, it shares the token's sessions
        checked = check_answers(base, templates, responder)
        nonce_rate(base, lines, min(2.0, args.duration), args.connections, service.pid)  # warm-up
        raws, nonces, bad, cpu_sig, cpu_service, cpu_wrk = [], [], 0, [], [], []
        size = 120 + len(templates[0][0])  # about a ResponseData with one SingleResponse and a nonce
        direct = Raw(demo_dir, "ocsp-ac-personnes", kind)
        for _ in range(args.rounds):
            raws.append(direct.rate(threads, args.duration, size))
            cpu_sig.append(direct.cpu_per_sig)
            rate, failed, service_cpu, wrk_cpu = nonce_rate(base, lines, args.duration, args.connections, service.pid)
            nonces.append(rate)
            cpu_service.append(service_cpu)
            cpu_wrk.append(wrk_cpu)
            bad += failed
        direct.close()
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)
    raw, nonce = statistics.median(raws), statistics.median(nonces)
    per_sig, per_answer = statistics.median(cpu_sig), statistics.median(cpu_service) + statistics.median(cpu_wrk)
    return {"key": "RSA-2048" if kind == "rsa" else "P-256", "threads": threads,
            "workers": args.workers or os.cpu_count(), "rounds": args.rounds,
            "duration_s": args.duration, "connections": args.connections, "raw_sig_per_s": round(raw, 1),
            "nonce_answers_per_s": round(nonce, 1), "ratio": round(nonce / raw, 3),
            "cpu_ratio": round(per_sig / per_answer, 3), "not_successful": bad,
            "verified": checked, "cpu_ms_per_raw_sig": round(1000 * statistics.median(cpu_sig), 3),
            "cpu_ms_per_answer_service": round(1000 * statistics.median(cpu_service), 3),
            "cpu_ms_per_answer_wrk": round(1000 * statistics.median(cpu_wrk), 3),
            "raw_samples": [round(r) for r in raws], "nonce_samples": [round(r) for r in nonces]}


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--key-type", choices=("rsa", "ec", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per raw and per nonce run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--certs", type=int, default=40, help="end entities of the demo built for the bench")
    parser.add_argument("--workers", type=int, default=None,
                        help="[http] workers of the service (default: its own, one serving process per core)")
    args = parser.parse_args(argv)
    if args.tiny:  # 1 round of 1 s, on the demos every tiny run shares
        args.rounds, args.duration = 1, 1.0
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (Debian package wrk; `make bench-packages`)")
    kinds = ["rsa", "ec"] if args.key_type == "both" else [args.key_type]
    rows = [bench_key(kind, args) for kind in kinds]
    lines = ["| OCSP signer key | signer sessions | raw python-pkcs11 sig/s | nonce answers/s | ratio |"
             " CPU ms per raw signature | CPU ms per nonce answer (service + wrk) | CPU ratio |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['key']} | {r['threads']} | {r['raw_sig_per_s']:,.0f} | {r['nonce_answers_per_s']:,.0f} |"
              f" {r['ratio']:.0%} | {r['cpu_ms_per_raw_sig']:.3f} | {r['cpu_ms_per_answer_service']:.3f} +"
              f" {r['cpu_ms_per_answer_wrk']:.3f} | {r['cpu_ratio']:.0%} |" for r in rows]
    report({"rows": rows}, args, lines)
    return 0 if all(r["not_successful"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
