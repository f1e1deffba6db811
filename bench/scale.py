"""OCSP throughput of two `annuaire serve` nodes on one PostgreSQL registry vs one node.

A demo of 10,000 RSA-2048 certificates imported into a PostgreSQL schema of its own (127.0.0.1:5432,
database `test`). Node A starts alone and pre-signs (persisting its responses in the registry); node B
then starts on the same registry and loads them. Load: two `wrk -t1 -c8` processes at once (random GETs
over 5,000 distinct single-CertID requests), both against A ("one node"), then one against A and one
against B ("two nodes": what a round-robin balancer does). Same machine, same run, after warm-up runs.
This host has 2 cores: the nodes and the load generators share them, so the ratio measures what a second
process on the same cores buys, not what a second machine would. ``--tiny``: 60 certificates, 1 s runs, one
round (a schema of its own, dropped after).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

from bench.common import OUT, arguments, demo, free_port, report, tiny_demo, wait_http, wait_presigned
from bench.ocsp import request_paths

N_CERTS = int(os.environ.get("BENCH_SCALE_CERTS", "10000"))
DURATION = os.environ.get("BENCH_SCALE_DURATION", "10s")
PG = os.environ.get("ANNUAIRE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = "bench_scale"
TINY = ("1s", 1)  # wrk duration, rounds (the shared tiny RSA demo: 60 certificates)
LUA = """
local paths = {}
for line in io.lines(os.getenv("PATHS")) do paths[#paths + 1] = line end
math.randomseed(os.time() + math.floor(os.clock() * 1000000))
request = function() return wrk.format("GET", paths[math.random(#paths)]) end
"""


def node_config(demo_dir: Path, name: str, port: int, schema: str = SCHEMA) -> Path:
    text = (demo_dir / "annuaire.toml").read_text()
    text = text[:text.index("[ldap]")] + text[text.index("[[issuers]]"):]
    text = text.replace('data_dir = "data"', f'data_dir = "node-{name}"')
    text = re.sub(r'listen = "127.0.0.1:\d+"', f'listen = "127.0.0.1:{port}"', text)
    url = f"{PG}?options=-csearch_path%3D{schema}"
    text = text.replace("[http]", f'[registry]\nurl = "{url}"\n\n[http]', 1)
    path = demo_dir / f"node-{name}.toml"
    path.write_text(text)
    return path


def start(config: Path, port: int, expect: float, poll: float = 2.0) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "directory.cli", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/readyz")
    wait_presigned(base, expect, poll)
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
    args = arguments(__doc__).parse_args()
    duration, rounds = TINY if args.tiny else (DURATION, 3)
    schema = f"{SCHEMA}_tiny_{os.getpid()}" if args.tiny else SCHEMA  # tiny: runs at once do not collide
    demo_dir = tiny_demo("rsa") if args.tiny else demo("scale-rsa", "rsa", N_CERTS)
    n_certs = len(json.loads((demo_dir / "certs" / "manifest.json").read_text()))
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    for name in ("a", "b"):  # the nodes' data of an earlier run belongs to the schema just dropped
        shutil.rmtree(demo_dir / f"node-{name}", ignore_errors=True)
    port_a, port_b = free_port(), free_port()
    a, b = node_config(demo_dir, "a", port_a, schema), node_config(demo_dir, "b", port_b, schema)
    subprocess.run([sys.executable, "-m", "directory.cli", "import", "-c", str(a), str(demo_dir / "certs")],
                   check=True, capture_output=True)
    # the offline root's ARL (signed at init) into the shared registry: without it no node is ready
    subprocess.run([sys.executable, "-m", "directory.cli", "crl", "publish", "-c", str(a), "--issuer", "ac-racine",
                    str(demo_dir / "ca" / "ac-racine.crl")], check=True, capture_output=True)
    paths = request_paths(demo_dir, "/ocsp/", False, 5000)
    base_a, base_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    expect = n_certs * 0.9
    poll = 0.2 if args.tiny else 2.0
    nodes = [start(a, port_a, expect, poll)]
    results: dict[str, list[float]] = {"one": [], "two": []}
    try:
        time.sleep(0.5 if args.tiny else 3)  # the responses flushed to the registry for node B
        nodes.append(start(b, port_b, expect, poll))
        for _ in range(0 if args.tiny else 2):  # warm-up: parsed-request caches on both nodes
            wrk_pair([base_a, base_b], paths, "1s" if args.tiny else "3s")
        for _ in range(rounds):  # interleaved, median kept
            results["one"].append(wrk_pair([base_a, base_a], paths, duration))
            results["two"].append(wrk_pair([base_a, base_b], paths, duration))
    finally:
        for proc in nodes:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        if args.tiny:
            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    one, two = statistics.median(results["one"]), statistics.median(results["two"])
    report({"certificates": n_certs, "duration": duration, "one_node_rps": results["one"],
            "two_nodes_rps": results["two"], "ratio": round(two / one, 3), "cores": os.cpu_count()}, args,
           [f"one node: {results['one']} req/s; two nodes: {results['two']} req/s; "
            f"median ratio {two / one:.2f}x (cores: {os.cpu_count()})"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
