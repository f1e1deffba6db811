"""OCSP throughput of two `annuaire serve` nodes on one PostgreSQL registry vs one node.

A demo of 10,000 RSA-2048 certificates imported into a PostgreSQL schema of its own (127.0.0.1:5432,
database `test`). Node A starts alone and pre-signs (persisting its responses in the registry); node B
then starts on the same registry and loads them. Load: two `wrk -t1 -c8` processes at once (random GETs
over 5,000 distinct single-CertID requests), both against A ("one node"), then one against A and one
against B ("two nodes": what a round-robin balancer does). Same machine, same run, after warm-up runs.
This host has 2 cores: the nodes and the load generators share them, so the ratio measures what a second
process on the same cores buys, not what a second machine would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psycopg

from bench.common import OUT, demo
from bench.ocsp import free_port, request_paths, wait_http

N_CERTS = int(os.environ.get("BENCH_SCALE_CERTS", "10000"))
DURATION = os.environ.get("BENCH_SCALE_DURATION", "10s")
PG = os.environ.get("ANNUAIRE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = "bench_scale"
LUA = """
local paths = {}
for line in io.lines(os.getenv("PATHS")) do paths[#paths + 1] = line end
math.randomseed(os.time() + math.floor(os.clock() * 1000000))
request = function() return wrk.format("GET", paths[math.random(#paths)]) end
"""


def node_config(demo_dir: Path, name: str, port: int) -> Path:
    text = (demo_dir / "annuaire.toml").read_text()
    text = text[:text.index("[ldap]")] + text[text.index("[[issuers]]"):]
    text = text.replace('data_dir = "data"', f'data_dir = "node-{name}"')
    text = re.sub(r'listen = "127.0.0.1:\d+"', f'listen = "127.0.0.1:{port}"', text)
    url = f"{PG}?options=-csearch_path%3D{SCHEMA}"
    text = text.replace("[http]", f'[registry]\nurl = "{url}"\n\n[http]', 1)
    path = demo_dir / f"node-{name}.toml"
    path.write_text(text)
    return path


def cached(base: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(m) for m in re.findall(r'^annuaire_ocsp_cached_responses\{[^}]*\} ([\d.e+]+)$', text, re.M))


def start(config: Path, port: int, expect: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "directory.cli", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/readyz")
    deadline = time.monotonic() + 1800
    while cached(base) < expect:
        if time.monotonic() > deadline:
            raise RuntimeError("pre-signing did not finish")
        time.sleep(2)
    return proc


def wrk_pair(targets: list[str], paths: Path, duration: str) -> float:
    OUT.mkdir(parents=True, exist_ok=True)
    script = OUT / "scale.lua"
    script.write_text(LUA)
    env = {**os.environ, "PATHS": str(paths)}
    rates: list[float] = []

    def run(base: str) -> None:
        out = subprocess.run(["wrk", "-t1", "-c8", f"-d{duration}", "-s", str(script), base], env=env,
                             capture_output=True, text=True, timeout=300).stdout
        found = re.search(r"Requests/sec:\s+([\d.]+)", out)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if found is None or errors:
            raise RuntimeError(f"wrk against {base}: {out[-1500:]}")
        rates.append(float(found.group(1)))

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(rates)


def main() -> int:
    demo_dir = demo("scale-rsa", "rsa", N_CERTS)
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
    port_a, port_b = free_port(), free_port()
    a, b = node_config(demo_dir, "a", port_a), node_config(demo_dir, "b", port_b)
    subprocess.run([sys.executable, "-m", "directory.cli", "import", "-c", str(a), str(demo_dir / "certs")],
                   check=True, capture_output=True)
    paths = request_paths(demo_dir, "/ocsp/", False, 5000)
    base_a, base_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    expect = N_CERTS * 0.9
    nodes = [start(a, port_a, expect)]
    results: dict[str, list[float]] = {"one": [], "two": []}
    try:
        time.sleep(3)  # the responses flushed to the registry for node B
        nodes.append(start(b, port_b, expect))
        for _ in range(2):  # warm-up: parsed-request caches on both nodes
            wrk_pair([base_a, base_b], paths, "3s")
        for _ in range(3):  # interleaved, median kept
            results["one"].append(wrk_pair([base_a, base_a], paths, DURATION))
            results["two"].append(wrk_pair([base_a, base_b], paths, DURATION))
    finally:
        for proc in nodes:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    one, two = sorted(results["one"])[1], sorted(results["two"])[1]
    print(f"one node: {results['one']} req/s; two nodes: {results['two']} req/s; "
          f"median ratio {two / one:.2f}x (cores: {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
