"""The pre-signed answer path side by side, on the very same response bytes, in one run:

- ours: ``annuaire serve``, ``POST /ocsp`` and ``GET /ocsp/{base64}`` answered from its pre-signed answers;
- a bare aiohttp handler: reads the body (POST) or the path (GET), one dictionary look-up, one write: the
  ceiling of this stack (the same event loop as ours in each comparison);
- ``cfssl ocspserve`` (Go, Debian ``golang-cfssl``), loaded with the responses our service returned.

Each event loop gets its side: our service (a demo of its own, ``[http] event_loop``), a bare handler on the same
loop, cfssl with the bytes that service answered. Every server runs at once and ``wrk -t2 -c16`` (keep-alive)
visits them all in turn, ``ROUNDS`` times; the median of each is kept: the machine's noise falls on every side
alike. Before timing, one request per side is checked: a successful OCSP response, the very bytes ours sent.

``python -m bench.ocsp_answer``: 1,500 demo certificates (~1,050 answers of one issuer), 10 s × 3 rounds;
``--tiny``: a few certificates, 1 s, one round (``make test`` runs it so it cannot rot). The last line printed
is the JSON of the figures and ratios (``--json``: the only line on stdout).

``--pin``: the load generator gets a core of its own. wrk (one thread) runs on the first core the bench may use,
every server on the second, so no side pays for wrk's CPU out of its own core. On a 2-core machine this is the
one way to read a rate ratio between servers undistorted by the load generator; it compares one core each
(cfssl's Go runtime sizes itself to its one allowed core; ours runs ``--workers`` processes on it).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from bench.common import OUT, demo, free_port, tree_cpu_seconds, wait_http

ISSUER = "ac-personnes"
# wrk: requests built once per thread (POST bodies from hex lines, or GET paths), one drawn at random each time
LUA = """
local method, target, built = os.getenv("METHOD"), os.getenv("TARGET"), {}
local function unhex(s) return (s:gsub("..", function(h) return string.char(tonumber(h, 16)) end)) end
init = function(args)
  for line in io.lines(os.getenv("LINES")) do
    if method == "POST" then
      built[#built + 1] = wrk.format("POST", target, {["Content-Type"] = "application/ocsp-request"}, unhex(line))
    else
      built[#built + 1] = wrk.format("GET", target .. line)
    end
  end
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end
request = function() return built[math.random(#built)] end
"""

# The ceiling of this stack: read the request, one dictionary look-up, one write (argv: port, table, loop).
BARE = """
import base64, json, sys, urllib.parse
from aiohttp import web
port, table, loop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
by_der = {bytes.fromhex(k): bytes.fromhex(v) for k, v in json.load(open(table)).items()}
by_path = {urllib.parse.quote(base64.b64encode(k).decode(), safe=""): v for k, v in by_der.items()}
default = next(iter(by_der.values()))
async def post(request):
    return web.Response(body=by_der.get(await request.read(), default), content_type="application/ocsp-response")
async def get(request):
    return web.Response(body=by_path.get(request.raw_path[6:], default), content_type="application/ocsp-response")
app = web.Application()
app.router.add_post("/ocsp", post)
app.router.add_get("/ocsp/{tail:.*}", get)
if loop == "uvloop":
    import uvloop
    event_loop = uvloop.new_event_loop()
else:
    import asyncio
    event_loop = asyncio.new_event_loop()
web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=event_loop)
"""


def _status(body: bytes) -> str:
    try:
        return ocsp.load_der_ocsp_response(body).response_status.name
    except ValueError as exc:
        return f"not an OCSP response ({exc})"


def start_cfssl(work: Path, answers: dict[bytes, bytes], sample: bytes) -> tuple[subprocess.Popen[bytes], str, bool]:
    """``cfssl ocspserve`` over ``answers``' responses: (process, base URL, whether it answers GET too).

    Refuses to go on unless a POST of ``sample`` returns our very bytes (a successful response): a peer
    answering ``unauthorized`` to everything would be timed answering nothing.
    """
    responses = work / "cfssl-responses.txt"
    responses.write_text("".join(base64.b64encode(body).decode() + "\n" for body in answers.values()))
    port = free_port()
    log = (work / "cfssl.log").open("wb")
    proc = subprocess.Popen([*PIN, "cfssl", "ocspserve", "-address", "127.0.0.1", "-port", str(port), "-responses",
                             str(responses), "-loglevel", "3"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_port(port)
        req = urllib.request.Request(base + "/", data=sample, headers={"Content-Type": "application/ocsp-request"})
        with urllib.request.urlopen(req, timeout=10) as answer:
            body = answer.read()
        if body != answers[sample]:
            raise RuntimeError(f"cfssl ocspserve answered a POST with something else than our response "
                               f"({_status(body)}): the comparison would be void")
        path = urllib.parse.quote(base64.b64encode(sample).decode(), safe="")
        try:
            with urllib.request.urlopen(f"{base}/{path}", timeout=10) as answer:
                get_ok = answer.read() == answers[sample]
        except urllib.error.HTTPError:
            get_ok = False
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    return proc, base, get_ok


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def pinned_cores() -> tuple[int, int]:
    """(the load generator's core, the servers' core) for ``--pin``: the first two cores this process may use."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("--pin needs two cores: one for wrk, one for the servers")
    return cores[0], cores[1]


PIN: list[str] = []  # the servers' command prefix: under --pin, taskset to their core
WRK = ["wrk", "-t2"]  # under --pin: taskset to its own core, one thread


def wrk(url: str, lines: Path, method: str, duration: str, pid: int | None = None) -> dict[str, float]:
    """One wrk run: ``method`` requests drawn at random from ``lines`` (POST bodies in hex, or GET paths); with
    ``pid``, also the CPU time that server (its process and children) spent per answer, in µs."""
    script = OUT / "ocsp-answer.lua"
    script.write_text(LUA)
    env = {**os.environ, "LINES": str(lines), "METHOD": method, "TARGET": urllib.parse.urlsplit(url).path or "/"}
    base = url.split("/", 3)
    cpu = tree_cpu_seconds(pid) if pid is not None else 0.0
    out = subprocess.run([*WRK, "-c16", f"-d{duration}", "-s", str(script),
                          "/".join(base[:3])], env=env, capture_output=True, text=True, timeout=300).stdout
    cpu = tree_cpu_seconds(pid) - cpu if pid is not None else 0.0
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise RuntimeError(f"wrk against {url} printed no rate:\n{out[-2000:]}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    result = {"rps": float(rate.group(1)), "non2xx": float(errors.group(1)) if errors else 0.0,
              "socket_errors": float(sum(int(x) for x in sock.groups())) if sock else 0.0,
              "cpu_us": 1e6 * cpu / max(1, int(total.group(1))) if total else 0.0}
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


def start_ours(demo_dir: Path, loop: str, workers: int = 1) -> tuple[subprocess.Popen[bytes], str]:
    """The service on a free port with ``[http] event_loop = loop`` and ``workers`` serving processes (1: the
    answer path of one process, as the bare handler's); waits until every answer is pre-signed."""
    port = free_port()
    # the public listener only: no admin listener, no LDAP (fixed ports other runs may hold; nothing to time)
    text = re.sub(r"(?m)^\[(ldap|admin)\]\n(?:(?!\[).*\n)*", "", (demo_dir / "annuaire.toml").read_text())
    http = f'listen = "127.0.0.1:{port}"\nevent_loop = "{loop}"\nworkers = {workers}'
    text = re.sub(r'listen = "127.0.0.1:\d+"', http, text, count=1)
    # answers signed by the CA key itself (no delegated responder certificate in them): cfssl 1.2.0's Go x509
    # cannot parse the demo responder certificate (its policy OID 2.25.<UUID> has arcs beyond Go's int) and
    # then drops every response, answering "unauthorized" to everything
    text = re.sub(r"(?m)^signer_(certificate|key_label) = .*\n", "", text)
    config = demo_dir / "bench-answer.toml"
    config.write_text(re.sub(r'base_url = "http://127.0.0.1:\d+"', f'base_url = "http://127.0.0.1:{port}"', text))
    db = sqlite3.connect(demo_dir / "data" / "registry.sqlite3")
    db.execute("DELETE FROM ocsp_responses")  # signed by the demo's delegated responder: signed again by the CA
    db.commit()
    proc = subprocess.Popen([*PIN, sys.executable, "-m", "directory.cli", "serve", "--config", str(config)],
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
    parser.add_argument("--certs", type=int, default=int(os.environ.get("BENCH_OCSP_ANSWER_CERTS", "1500")))
    parser.add_argument("--duration", default=os.environ.get("BENCH_OCSP_ANSWER_DURATION", "10s"))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_OCSP_ANSWER_ROUNDS", "3")))
    parser.add_argument("--loops", default="asyncio,uvloop", help="event loops of our service and the bare handler")
    parser.add_argument("--json", action="store_true", help="stdout: the JSON line only (the table on stderr)")
    parser.add_argument("--workers", type=int, default=1,
                        help="our serving processes (default 1: one process against the one-process bare handler)")
    parser.add_argument("--pin", action="store_true",
                        help="wrk (one thread) on one core, every server on another: rates undistorted by wrk")
    args = parser.parse_args(argv)
    if args.pin:
        load, servers = pinned_cores()
        WRK[:], PIN[:] = ["taskset", "-c", str(load), "wrk", "-t1"], ["taskset", "-c", str(servers)]
    if args.tiny:
        args.certs, args.duration, args.rounds = 8, "1s", 1
    for tool in ("wrk", "cfssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: `make bench-packages` installs it")
    loops = [name for name in args.loops.split(",") if name != "uvloop" or _has_uvloop()]
    results: dict[str, dict[str, float]] = {}
    targets: dict[str, tuple[str, Path, str, int]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    answers = 0
    try:
        for loop in loops:  # every server up at once: the rounds below interleave them all
            answers = _side(loop, args.certs, targets, procs, args.workers)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, (url, lines, method, pid) in targets.items():
                runs[name].append(wrk(url, lines, method, args.duration, pid))
        for name, rows in runs.items():
            results[name] = {"rps": statistics.median(r["rps"] for r in rows),
                             "cpu_us": statistics.median(r["cpu_us"] for r in rows),
                             "non2xx": sum(r["non2xx"] for r in rows),
                             "socket_errors": sum(r["socket_errors"] for r in rows)}
    finally:
        for proc in procs:
            stop(proc)
    report(results, loops, answers, args)
    return 0


def _side(loop: str, certs: int, targets: dict[str, tuple[str, Path, str, int]],
          procs: list[subprocess.Popen[bytes]], workers: int = 1) -> int:
    """Our service on ``loop`` (a demo of its own), the bare handler on the same loop, cfssl with the bytes ours
    answered: started (into ``procs``), checked, and their wrk targets added. Returns the number of answers."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)  # what building the demo prints goes to stderr: stdout is the report (the JSON line only)
    try:
        demo_dir = demo(f"ocsp-answer-{certs}-{loop}", "rsa", certs)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    requests = requests_for(demo_dir)
    work = OUT / f"ocsp-answer-{certs}-{loop}"
    work.mkdir(parents=True, exist_ok=True)
    ours, base = start_ours(demo_dir, loop, workers)
    procs.append(ours)
    answers: dict[bytes, bytes] = {}
    for der in requests:  # what our service answers is what the others serve
        body = post(base + "/ocsp", der)
        if not successful(body):
            raise RuntimeError("our service did not answer successfully")
        answers[der] = body
    posts, gets = work / "posts.hex", work / "gets.txt"
    posts.write_text("".join(der.hex() + "\n" for der in requests))
    gets.write_text("".join(_b64(der) + "\n" for der in requests))
    table = work / "answers.json"
    table.write_text(json.dumps({der.hex(): body.hex() for der, body in answers.items()}))
    bare_port = free_port()
    bare_proc = subprocess.Popen([*PIN, sys.executable, "-c", BARE, str(bare_port), str(table), loop])
    procs.append(bare_proc)
    bare = f"http://127.0.0.1:{bare_port}"
    sample = requests[0]
    wait_http(bare + "/ocsp/" + _b64(sample))
    if post(bare + "/ocsp", sample) != answers[sample] or get(bare + "/ocsp/" + _b64(sample)) != answers[sample]:
        raise RuntimeError("the bare handler does not return our bytes")
    if get(base + "/ocsp/" + _b64(sample)) != answers[sample]:
        raise RuntimeError("our GET differs from our POST")
    targets.update({f"ours {loop} POST": (base + "/ocsp", posts, "POST", ours.pid),
                    f"ours {loop} GET": (base + "/ocsp/", gets, "GET", ours.pid),
                    f"bare aiohttp {loop} POST": (bare + "/ocsp", posts, "POST", bare_proc.pid),
                    f"bare aiohttp {loop} GET": (bare + "/ocsp/", gets, "GET", bare_proc.pid)})
    cfssl, cfssl_url, cfssl_get = start_cfssl(work, answers, sample)
    procs.append(cfssl)
    targets[f"cfssl ({loop} side) POST"] = (cfssl_url + "/", posts, "POST", cfssl.pid)
    if cfssl_get:
        targets[f"cfssl ({loop} side) GET"] = (cfssl_url + "/", gets, "GET", cfssl.pid)
    return len(answers)


def _b64(der: bytes) -> str:
    return urllib.parse.quote(base64.b64encode(der).decode(), safe="")


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def report(results: dict[str, dict[str, float]], loops: list[str], answers: int, args: argparse.Namespace) -> None:
    table = sys.stderr if args.json else sys.stdout
    pinned = ", wrk on a core of its own, every server on the other" if args.pin else ""
    print(f"{answers} pre-signed answers of {ISSUER}, wrk {WRK[-1]} -c16 -d{args.duration} keep-alive{pinned}, "
          f"median of {args.rounds} interleaved rounds", file=table)
    print("| run | req/s | server CPU µs per answer | non-2xx | socket errors |", file=table)
    print("|---|---|---|---|---|", file=table)
    for name, r in results.items():
        print(f"| {name} | {r['rps']:,.0f} | {r['cpu_us']:.1f} | {r['non2xx']:.0f} | {r['socket_errors']:.0f} |",
              file=table)
    ratios: dict[str, float] = {}
    for loop in loops:
        for method in ("POST", "GET"):
            ours = results[f"ours {loop} {method}"]["rps"]
            ratios[f"ours/bare {loop} {method}"] = ours / results[f"bare aiohttp {loop} {method}"]["rps"]
            peer = results.get(f"cfssl ({loop} side) {method}")
            if peer is not None:
                ratios[f"ours/cfssl {loop} {method}"] = ours / peer["rps"]
                ours_cpu = results[f"ours {loop} {method}"]["cpu_us"]
                if ours_cpu:  # CPU per answer, the peer's over ours: what load on a shared machine distorts least
                    ratios[f"CPU cfssl/ours {loop} {method}"] = peer["cpu_us"] / ours_cpu
    if len(loops) == 2:
        for method in ("POST", "GET"):
            ratios[f"ours uvloop/asyncio {method}"] = (results[f"ours uvloop {method}"]["rps"]
                                                       / results[f"ours asyncio {method}"]["rps"])
    for name, value in ratios.items():
        print(f"- {name}: {value:.2f}", file=table)
    print(json.dumps({"bench": "ocsp_answer", "workers": args.workers, "pinned": args.pin, "loops": loops,
                      "answers": answers,
                      "duration": args.duration,
                      "rounds": args.rounds,
                      "cfssl_get": any(name.startswith("cfssl") and name.endswith("GET") for name in results),
                      "rps": {name: round(r["rps"]) for name, r in results.items()},
                      "cpu_us": {name: round(r["cpu_us"], 1) for name, r in results.items()},
                      "errors": sum(r["non2xx"] + r["socket_errors"] for r in results.values()),
                      "ratios": {name: round(value, 3) for name, value in ratios.items()}}))


if __name__ == "__main__":
    sys.exit(main())
