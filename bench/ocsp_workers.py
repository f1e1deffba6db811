"""``[http] workers``: OCSP req/s with two serving processes vs one, and the whole service's memory with
1,000,000 pre-signed answers whatever the number of serving processes.

Same machine, same run. Rates: `wrk -t2 -c16`, keep-alive, ``POST /ocsp`` and ``GET /ocsp/...`` over a sample of
pre-signed single-CertID requests (SHA-1, no nonce) of a demo CA, against two instances of the service (copies of
one demo), one with ``workers = 1`` and one with ``workers = 2``, runs alternated between them (median of
``BENCH_WORKERS_ROUNDS``, 3). Memory: the
registry filled with 1,000,000 answers (canonical CertIDs, the configured responder's key id, RSA-2048-sized
signatures), the service started with workers = 1, 2, 4, traffic over a sample, then for the main process
and every descendant (serving processes, LDAP worker, slapd): RSS (shared pages counted in each process),
PSS (shared pages divided among the processes mapping them: the sum is the service's memory) and the bound
"PSS outside the store + the whole store file" (what the service can reach whatever the traffic touches).

    python -m bench.ocsp_workers            # 10 s per run, 1,000,000 answers (the coordinator's numbers)
    python -m bench.ocsp_workers --tiny     # make test: a second per run, 3,000 answers, a Python client

The last line is JSON: {"bench": "ocsp_workers", "ratio_post": ..., "ratio_get": ..., "memory_mb": {...}}.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from bench.common import OUT, demo, fill_presigned, on_free_ports

LUA = """
local bodies, paths = {}, {}
for line in io.lines(os.getenv("BODIES")) do
  bodies[#bodies + 1] = (line:gsub("..", function(cc) return string.char(tonumber(cc, 16)) end))
end
for line in io.lines(os.getenv("PATHS")) do paths[#paths + 1] = line end
local post = os.getenv("METHOD") == "POST"
math.randomseed(os.time() + math.floor(os.clock() * 1000000))
request = function()
  if post then
    return wrk.format("POST", "/ocsp", {["Content-Type"] = "application/ocsp-request"},
                      bodies[math.random(#bodies)])
  end
  return wrk.format("GET", paths[math.random(#paths)])
end
"""


def configured(demo_dir: Path, workers: int) -> tuple[Path, str]:
    """A copy of the demo's configuration on free ports with ``workers``; (path, base URL)."""
    text, base, _ = on_free_ports((demo_dir / "annuaire.toml").read_text(), f"workers = {workers}")
    path = demo_dir / f"annuaire-workers{workers}.toml"
    path.write_text(text)
    return path, base


def metric(base: str, prefix: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
        lines = r.read().decode().splitlines()
    return sum(float(x.split()[-1]) for x in lines if x.startswith(prefix))


class Service:
    """``annuaire serve`` for one run; waits until ready and holding ``answers`` pre-signed answers."""

    def __init__(self, demo_dir: Path, workers: int, answers: int, timeout: float = 1800) -> None:
        config, self.base = configured(demo_dir, workers)
        self.log = (OUT / f"serve-workers{workers}.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "directory.cli", "serve", "--config", str(config)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited ({self.proc.returncode}): see {self.log.name}")
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=30):
                    pass
                if metric(self.base, "annuaire_ocsp_cached_responses") >= answers and (
                        workers == 1 or metric(self.base, 'annuaire_http_workers{state="serving"}') == workers):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.base}: not ready with {answers} answers in time")
            time.sleep(1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        self.log.close()


def requests_of(demo_dir: Path, count: int) -> list[bytes]:
    """Single-CertID SHA-1 requests without a nonce for up to ``count`` certificates of the demo's first CA."""
    manifest = json.loads((demo_dir / "certs" / "manifest.json").read_text())
    manifest = [m for m in manifest if m["issuer"] == "ac-personnes"]
    issuer = x509.load_pem_x509_certificate((demo_dir / "ca" / "ac-personnes.pem").read_bytes())
    out = []
    for entry in random.Random(7).sample(manifest, min(count, len(manifest))):
        cert = x509.load_pem_x509_certificate((demo_dir / "certs" / entry["file"]).read_bytes())
        out.append(ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build().public_bytes(
            serialization.Encoding.DER))
    return out


def get_path(der: bytes) -> str:
    return "/ocsp/" + urllib.parse.quote(base64.b64encode(der).decode(), safe="")


def wrk(base: str, method: str, bodies: list[bytes], duration: str) -> float:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "workers.lua").write_text(LUA)
    (OUT / "workers-bodies.txt").write_text("\n".join(b.hex() for b in bodies) + "\n")
    (OUT / "workers-paths.txt").write_text("\n".join(get_path(b) for b in bodies) + "\n")
    env = {**os.environ, "BODIES": str(OUT / "workers-bodies.txt"), "PATHS": str(OUT / "workers-paths.txt"),
           "METHOD": method}
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{duration}", "-s", str(OUT / "workers.lua"), base], env=env,
                         capture_output=True, text=True, timeout=600).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if found is None or bad is not None:
        raise RuntimeError(f"wrk against {base}:\n{out[-2000:]}")
    return float(found.group(1))


def python_load(base: str, method: str, bodies: list[bytes], seconds: float, connections: int = 4) -> float:
    """The tiny mode's client (no wrk needed): keep-alive connections in threads, answers checked."""
    host, port = urllib.parse.urlsplit(base).hostname, urllib.parse.urlsplit(base).port
    counts = [0] * connections
    stop = time.monotonic() + seconds

    def run(n: int) -> None:
        conn = http.client.HTTPConnection(host or "", port, timeout=10)
        rng = random.Random(n)
        while time.monotonic() < stop:
            body = rng.choice(bodies)
            if method == "POST":
                conn.request("POST", "/ocsp", body=body, headers={"Content-Type": "application/ocsp-request"})
            else:
                conn.request("GET", get_path(body))
            response = conn.getresponse()
            answer = ocsp.load_der_ocsp_response(response.read())
            assert response.status == 200 and answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            counts[n] += 1
        conn.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def rates(demo_dir: Path, answers: int, tiny: bool) -> dict[str, dict[str, float]]:
    """Both services up at once (one with 1 serving process, one with 2, the same registry), runs alternated
    between them ``BENCH_WORKERS_ROUNDS`` times: the machine's noise falls on both sides; median per side."""
    bodies = requests_of(demo_dir, 2000)
    rounds = 1 if tiny else int(os.environ.get("BENCH_WORKERS_ROUNDS", "3"))
    samples: dict[str, dict[str, list[float]]] = {}
    services = {}
    try:
        for workers in (1, 2):
            services[workers] = Service(demo_dir if workers == 1 else twin(demo_dir), workers, answers)
        for _ in range(rounds):
            for method in ("POST", "GET"):
                for workers, service in services.items():
                    if tiny or shutil.which("wrk") is None:
                        python_load(service.base, method, bodies, 0.3)  # warm-up: request caches, connections
                        rate = python_load(service.base, method, bodies, 1.0)
                    else:
                        wrk(service.base, method, bodies, "2s")
                        rate = wrk(service.base, method, bodies, os.environ.get("BENCH_WORKERS_DURATION", "10s"))
                    samples.setdefault(f"workers={workers}", {}).setdefault(method, []).append(rate)
                    print(f"workers={workers} {method}: {rate:,.0f} req/s", file=sys.stderr)
    finally:
        for service in services.values():
            service.stop()
    return {run: {method: sorted(v)[len(v) // 2] for method, v in by.items()} for run, by in samples.items()}


def twin(demo_dir: Path) -> Path:
    """A copy of the demo (token, registry, slapd data) for a second instance running at the same time."""
    copy = demo_dir.with_name(demo_dir.name + "-twin")
    if not copy.exists():
        shutil.copytree(demo_dir, copy)
        conf = copy / "hsm" / "softhsm2.conf"
        conf.write_text(conf.read_text().replace(str(demo_dir / "hsm"), str(copy / "hsm")))
    return copy


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def memory(pid: int, store: Path) -> dict[str, float]:
    """MB summed over the process tree: RSS (shared pages counted in each process), PSS (shared pages divided
    between the processes mapping them), and the bound whatever the traffic touches: PSS outside the store
    plus the whole store file (every page of it resident once)."""
    total = {"rss": 0.0, "pss": 0.0, "store_pss": 0.0}
    mapped = False  # workers = 1 keeps its answers in memory: no store
    for p in tree(pid):
        try:
            text = Path(f"/proc/{p}/smaps").read_text()
        except OSError:
            continue
        in_store = False
        for line in text.splitlines():
            head = line.split()
            if head and not head[0].endswith(":"):  # a mapping's first line: address range ... path
                in_store = len(head) >= 6 and head[5] == str(store)
                mapped = mapped or in_store
            elif head and head[0] in ("Rss:", "Pss:"):
                kb = int(head[1]) / 1024
                total["rss" if head[0] == "Rss:" else "pss"] += kb
                if in_store and head[0] == "Pss:":
                    total["store_pss"] += kb
    size = store.stat().st_size / 2**20 if mapped and store.exists() else 0.0
    return {"rss": round(total["rss"]), "pss": round(total["pss"]),
            "bound": round(total["pss"] - total["store_pss"] + size), "store": round(size)}


def scale(demo_dir: Path, answers: int, tiny: bool) -> tuple[int, dict[str, dict[str, float]]]:
    answers = fill_presigned(demo_dir, answers)
    issuer = x509.load_pem_x509_certificate((demo_dir / "ca" / "ac-personnes.pem").read_bytes())
    from directory import cert_id

    name_hash, key_hash = cert_id.issuer_hashes(issuer, "sha1")
    rng = random.Random(3)
    sample = [ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash, key_hash, 0x10000000 + rng.randrange(answers), hashes.SHA1()).build().public_bytes(
        serialization.Encoding.DER) for _ in range(min(2000, answers))]
    out = {}
    for workers in (1, 2, 4):
        service = Service(demo_dir, workers, answers)
        try:
            python_load(service.base, "GET", sample, 0.5 if tiny else 5.0)
            time.sleep(1 if tiny else 5)
            out[f"workers={workers}"] = memory(service.proc.pid, demo_dir / "data" / "ocsp-answers.lmdb")
            print(f"workers={workers}, {answers:,} answers: {out[f'workers={workers}']} MB", file=sys.stderr)
        finally:
            service.stop()
    return answers, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="seconds, not minutes (make test)")
    args = parser.parse_args(argv)
    certs = 60 if args.tiny else int(os.environ.get("BENCH_WORKERS_CERTS", "5000"))
    answers = 3000 if args.tiny else int(os.environ.get("BENCH_WORKERS_ANSWERS", "1000000"))
    suffix = "-tiny" if args.tiny else ""
    rate_demo = demo(f"ocsp-workers{suffix}", "rsa", certs)
    with_certs = sum(1 for m in json.loads((rate_demo / "certs" / "manifest.json").read_text())
                     if m["issuer"] == "ac-personnes")
    measured = rates(rate_demo, with_certs, args.tiny)
    answers, mem = scale(demo(f"ocsp-workers-rss{suffix}", "rsa", 0), answers, args.tiny)
    one, two = measured["workers=1"], measured["workers=2"]
    print("| run | POST req/s | GET req/s |")
    print("|---|---|---|")
    for name, r in measured.items():
        print(f"| {name} | {r['POST']:,.0f} | {r['GET']:,.0f} |")
    print(f"\n| {answers:,} pre-signed answers | RSS MB (sum) | PSS MB (sum) | bound: PSS outside the store + store "
          "file MB | store file MB |")
    print("|---|---|---|---|---|")
    for name, m in mem.items():
        print(f"| {name} | {m['rss']} | {m['pss']} | {m['bound']} | {m['store']} |")
    result = {"bench": "ocsp_workers", "tiny": args.tiny, "cores": len(os.sched_getaffinity(0)),
              "ratio_post": round(two["POST"] / one["POST"], 2), "ratio_get": round(two["GET"] / one["GET"], 2),
              "rates": measured, "answers": answers, "memory_mb": mem}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
