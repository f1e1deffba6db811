"""The pre-signed answer path side by side, on the very same response bytes, in one run:

- ours: ``annuaire serve``, ``POST /ocsp`` and ``GET /ocsp/{base64}`` answered from its pre-signed answers;
- a bare aiohttp handler: reads the body (POST) or the path (GET), one dictionary look-up, one write: the
  ceiling of this stack (the same event loop as ours in each comparison);
- ``cfssl ocspserve`` (Go, Debian ``golang-cfssl``), loaded with the responses our service returned.

Every server runs at once; ``wrk -t2 -c16`` (keep-alive) visits them in turn, ``ROUNDS`` times, and the median
of each is kept: the machine's noise falls on every side alike. Our service runs once per event loop
(``[http] event_loop``: asyncio, then uvloop when importable), each against a bare handler on the same loop.
Before timing, one request per side is checked: a successful OCSP response, the very bytes ours sent.

``python -m bench.ocsp_answer`` (1,000 certificates, 10 s × 3 rounds); ``--tiny`` (a few certificates, 1 s,
one round: ``make test`` runs it so it cannot rot). The last line printed is the JSON of the ratios.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from bench.common import OUT, demo
from bench.ocsp_peers import BARE, LUA, free_port, start_cfssl, wait_http

ISSUER = "ac-personnes"


def wrk(url: str, lines: Path, method: str, duration: str) -> dict[str, float]:
    """One wrk run: ``method`` requests drawn at random from ``lines`` (POST bodies in hex, or GET paths)."""
    script = OUT / "ocsp-answer.lua"
    script.write_text(LUA)
    env = {**os.environ, "LINES": str(lines), "METHOD": method, "TARGET": urllib.parse.urlsplit(url).path or "/"}
    base = url.split("/", 3)
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{duration}", "-s", str(script), "/".join(base[:3])], env=env,
                         capture_output=True, text=True, timeout=300).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise RuntimeError(f"wrk against {url} printed no rate:\n{out[-2000:]}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result = {"rps": float(rate.group(1)), "non2xx": float(errors.group(1)) if errors else 0.0,
              "socket_errors": float(sum(int(x) for x in sock.groups())) if sock else 0.0}
    print(f"{method} {url}: {result}", file=sys.stderr)
    return result


def requests_for(demo_dir: Path) -> list[bytes]:
    """One single-CertID SHA-1 request (no nonce: what RFC 5019 clients send) per certificate of ISSUER."""
    manifest = [m for m in json.loads((demo_dir / "certs" / "manifest.json").read_text()) if m["issuer"] == ISSUER]
    issuer = x509.load_pem_x509_certificate((demo_dir / "ca" / f"{ISSUER}.pem").read_bytes())
    out = []
    for entry in manifest:
        cert = x509.load_pem_x509_certificate((demo_dir / "certs" / entry["file"]).read_bytes())
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
        out.append(builder.build().public_bytes(serialization.Encoding.DER))
    return out


def post(url: str, der: bytes) -> bytes:
    req = urllib.request.Request(url, data=der, headers={"Content-Type": "application/ocsp-request"})
    with urllib.request.urlopen(req, timeout=10) as answer:
        return answer.read()


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read()


def successful(body: bytes) -> bool:
    return ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.SUCCESSFUL


def start_ours(demo_dir: Path, loop: str) -> tuple[subprocess.Popen[bytes], str]:
    """The service on a free port with ``[http] event_loop = loop``; waits until every answer is pre-signed."""
    port = free_port()
    # the public listener only: no admin listener, no LDAP (fixed ports other runs may hold; nothing to time)
    text = re.sub(r"(?m)^\[(ldap|admin)\]\n(?:(?!\[).*\n)*", "", (demo_dir / "annuaire.toml").read_text())
    text = re.sub(r'listen = "127.0.0.1:\d+"', f'listen = "127.0.0.1:{port}"\nevent_loop = "{loop}"', text, count=1)
    # answers signed by the CA key itself (no delegated responder certificate in them): cfssl 1.2.0's Go x509
    # cannot parse the demo responder certificate (its policy OID 2.25.<UUID> has arcs beyond Go's int) and
    # then drops every response, answering "unauthorized" to everything
    text = re.sub(r"(?m)^signer_(certificate|key_label) = .*\n", "", text)
    config = demo_dir / "bench-answer.toml"
    config.write_text(re.sub(r'base_url = "http://127.0.0.1:\d+"', f'base_url = "http://127.0.0.1:{port}"', text))
    db = sqlite3.connect(demo_dir / "data" / "registry.sqlite3")
    db.execute("DELETE FROM ocsp_responses")  # signed by the demo's delegated responder: signed again by the CA
    db.commit()
    proc = subprocess.Popen([sys.executable, "-m", "directory.cli", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/readyz", timeout=120)
    except RuntimeError:
        stop(proc)
        raise
    want = db.execute("SELECT COUNT(*) FROM certificates c JOIN issuers i ON c.issuer_id = i.id WHERE i.name = ?",
                      (ISSUER,)).fetchone()[0]
    deadline = time.monotonic() + 600
    while db.execute("SELECT COUNT(*) FROM ocsp_responses r JOIN issuers i ON r.issuer_id = i.id WHERE i.name = ?"
                     " AND r.hash_name = 'sha1'", (ISSUER,)).fetchone()[0] < want:
        if time.monotonic() > deadline:
            raise RuntimeError("pre-signing did not finish")
        time.sleep(0.5)
    db.close()
    time.sleep(2.5)  # the persisted rows were in memory first: nothing left to sign
    return proc, base


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few certificates, 1 s runs (make test)")
    parser.add_argument("--certs", type=int, default=int(os.environ.get("BENCH_OCSP_ANSWER_CERTS", "2000")))
    parser.add_argument("--duration", default=os.environ.get("BENCH_OCSP_ANSWER_DURATION", "10s"))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_OCSP_ANSWER_ROUNDS", "3")))
    parser.add_argument("--loops", default="asyncio,uvloop", help="event loops of our service and the bare handler")
    args = parser.parse_args(argv)
    if args.tiny:
        args.certs, args.duration, args.rounds = 8, "1s", 1
    for tool in ("wrk", "cfssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: `make bench-packages` installs it")
    demo_dir = demo(f"ocsp-answer-{args.certs}", "rsa", args.certs)
    requests = requests_for(demo_dir)
    work = OUT / f"ocsp-answer-{args.certs}"
    work.mkdir(parents=True, exist_ok=True)
    loops = [name for name in args.loops.split(",") if name != "uvloop" or _has_uvloop()]
    results: dict[str, dict[str, float]] = {}
    for loop in loops:
        answers: dict[bytes, bytes] = {}
        ours, base = start_ours(demo_dir, loop)
        peers: list[subprocess.Popen[bytes]] = []
        try:
            for der in requests:  # what our service answers is what the others serve
                body = post(base + "/ocsp", der)
                if not successful(body):
                    raise RuntimeError("our service did not answer successfully")
                answers.setdefault(der, body)
            posts, gets = work / "posts.hex", work / "gets.txt"
            posts.write_text("".join(der.hex() + "\n" for der in requests))
            gets.write_text("".join(_b64(der) + "\n" for der in requests))
            table = work / "answers.json"
            table.write_text(json.dumps({der.hex(): body.hex() for der, body in answers.items()}))
            bare_port = free_port()
            peers.append(subprocess.Popen([sys.executable, "-c", BARE, str(bare_port), str(table), loop]))
            bare = f"http://127.0.0.1:{bare_port}"
            wait_http(bare + "/ocsp/" + _b64(requests[0]))
            sample = requests[0]
            if (post(bare + "/ocsp", sample) != answers[sample]
                    or get(bare + "/ocsp/" + _b64(sample)) != answers[sample]):
                raise RuntimeError("the bare handler does not return our bytes")
            if get(base + "/ocsp/" + _b64(sample)) != answers[sample]:
                raise RuntimeError("our GET differs from our POST")
            targets = {f"ours {loop} POST": (base + "/ocsp", posts, "POST"),
                       f"ours {loop} GET": (base + "/ocsp/", gets, "GET"),
                       f"bare aiohttp {loop} POST": (bare + "/ocsp", posts, "POST"),
                       f"bare aiohttp {loop} GET": (bare + "/ocsp/", gets, "GET")}
            cfssl, cfssl_url, cfssl_get = start_cfssl(work, answers, sample)
            peers.append(cfssl)
            targets[f"cfssl ({loop} run) POST"] = (cfssl_url + "/", posts, "POST")
            if cfssl_get:
                targets[f"cfssl ({loop} run) GET"] = (cfssl_url + "/", gets, "GET")
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (url, lines, method) in targets.items():
                    runs[name].append(wrk(url, lines, method, args.duration))
            for name, rows in runs.items():
                results[name] = {"rps": statistics.median(r["rps"] for r in rows),
                                 "non2xx": sum(r["non2xx"] for r in rows),
                                 "socket_errors": sum(r["socket_errors"] for r in rows)}
        finally:
            stop(ours)
            for peer in peers:
                peer.terminate()
                peer.wait()
    report(results, loops, len(requests), args)
    return 0


def _b64(der: bytes) -> str:
    return urllib.parse.quote(base64.b64encode(der).decode(), safe="")


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def report(results: dict[str, dict[str, float]], loops: list[str], answers: int, args: argparse.Namespace) -> None:
    print(f"{answers} pre-signed answers of {ISSUER}, wrk -t2 -c16 -d{args.duration} keep-alive, "
          f"median of {args.rounds} interleaved rounds")
    print("| run | req/s | non-2xx | socket errors |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['rps']:,.0f} | {r['non2xx']:.0f} | {r['socket_errors']:.0f} |")
    ratios: dict[str, float] = {}
    for loop in loops:
        for method in ("POST", "GET"):
            ours = results[f"ours {loop} {method}"]["rps"]
            ratios[f"ours/bare {loop} {method}"] = ours / results[f"bare aiohttp {loop} {method}"]["rps"]
            peer = results.get(f"cfssl ({loop} run) {method}")
            if peer is not None:
                ratios[f"ours/cfssl {loop} {method}"] = ours / peer["rps"]
    if len(loops) == 2:
        for method in ("POST", "GET"):
            ratios[f"ours uvloop/asyncio {method}"] = (results[f"ours uvloop {method}"]["rps"]
                                                       / results[f"ours asyncio {method}"]["rps"])
    for name, value in ratios.items():
        print(f"- {name}: {value:.2f}")
    print(json.dumps({"bench": "ocsp_answer", "answers": answers, "duration": args.duration, "rounds": args.rounds,
                      "cfssl_get": any(name.startswith("cfssl") and name.endswith("GET") for name in results),
                      "rps": {name: round(r["rps"]) for name, r in results.items()},
                      "errors": sum(r["non2xx"] + r["socket_errors"] for r in results.values()),
                      "ratios": {name: round(value, 3) for name, value in ratios.items()}}))


if __name__ == "__main__":
    sys.exit(main())
