"""Soak: mixed load from a second process against one running instance, for a long time.

80% OCSP GETs (RFC 5019, random certificates), 15% CRL downloads (every published CRL), 5% revocations
through the admin API (keyCompromise on random certificates: 201, or 200 once already revoked). Reports
throughput, p50/p99 per kind, errors (anything else than the expected answers, or a failed connection:
must be 0) and the service's resident memory every 10 s (must be flat after warm-up).

    python -m bench.soak                      # 10 minutes against a demo of its own (bench/out/soak)
    python -m bench.soak --tiny --json        # make test: 3 seconds against a 60-certificate demo of its own
    python -m bench.soak --base URL --admin URL --token-file F --demo DIR --pid PID --duration 30 --json
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bench.common import TINY_CERTS, arguments, demo, on_free_ports, tiny_demo, wait_http, wait_presigned
from bench.ocsp import request_lines

MIX = (("ocsp", 0.80), ("crl", 0.15), ("revoke", 0.05))
EXPECTED = {"ocsp": {200}, "crl": {200}, "revoke": {200, 201}}
SIZE = 20000  # certificates of the own demo
TINY = 3.0  # seconds, against the shared tiny RSA demo (60 certificates)


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def run_load(base: str, admin: str, token: str, demo_dir: Path, pid: int | None, duration: float,
                   concurrency: int = 16) -> dict[str, object]:
    ocsp_paths = request_lines(demo_dir, "/ocsp/", False, 5000)
    manifest = json.loads((demo_dir / "certs" / "manifest.json").read_text())
    revocable = [m for m in manifest if m["issuer"] != "ac-racine"]
    rng = random.Random(11)
    latencies: dict[str, list[float]] = {kind: [] for kind, _ in MIX}
    errors: dict[str, int] = {}
    rss: list[tuple[int, float]] = []
    crl_names: list[str] = []
    started = time.monotonic()
    deadline = started + duration

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     connector=aiohttp.TCPConnector(limit=concurrency * 2)) as session:
        async with session.get(f"{base}/status.json") as r:
            status = await r.json()
        crl_names = [c["url"].rsplit("/", 1)[-1] for i in status["issuers"] for c in i["crls"] if c["published"]]

        async def one() -> None:
            kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
            t = time.perf_counter()
            try:
                if kind == "ocsp":
                    async with session.get(base + rng.choice(ocsp_paths)) as r:
                        await r.read()
                        code = r.status
                elif kind == "crl":
                    async with session.get(f"{base}/crl/{rng.choice(crl_names)}") as r:
                        await r.read()
                        code = r.status
                else:
                    entry = rng.choice(revocable)
                    async with session.post(f"{admin}/api/v1/revocations", headers={"Authorization": f"Bearer {token}"},
                                            json={"issuer": entry["issuer"], "serial": entry["serial_hex"],
                                                  "reason": "keyCompromise"}) as r:
                        await r.read()
                        code = r.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors[f"{kind}: {type(exc).__name__}"] = errors.get(f"{kind}: {type(exc).__name__}", 0) + 1
                return
            latencies[kind].append(time.perf_counter() - t)
            if code not in EXPECTED[kind]:
                errors[f"{kind}: HTTP {code}"] = errors.get(f"{kind}: HTTP {code}", 0) + 1

        async def client() -> None:
            while time.monotonic() < deadline:
                await one()

        async def sampler() -> None:
            while time.monotonic() < deadline and pid is not None:
                rss.append((int(time.monotonic() - started), round(rss_mb(pid), 1)))
                await asyncio.sleep(min(10.0, max(1.0, duration / 10)))

        await asyncio.gather(*(client() for _ in range(concurrency)), sampler())
    elapsed = time.monotonic() - started
    total = sum(len(v) for v in latencies.values())
    summary: dict[str, object] = {
        "seconds": round(elapsed, 1), "requests": total, "rps": round(total / elapsed, 1),
        "errors": sum(errors.values()), "error_kinds": errors,
        "by_kind": {k: {"count": len(v), "p50_ms": round(percentile(v, 0.50) * 1000, 2),
                        "p99_ms": round(percentile(v, 0.99) * 1000, 2)} for k, v in latencies.items()},
        "rss_mb": rss,
    }
    if len(rss) >= 4:  # flat after warm-up: compare the second sample with the last
        summary["rss_growth_mb_after_warmup"] = round(rss[-1][1] - rss[1][1], 1)
    return summary


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--base")
    parser.add_argument("--admin")
    parser.add_argument("--token-file")
    parser.add_argument("--demo")
    parser.add_argument("--pid", type=int)
    parser.add_argument("--duration", type=float, default=600)
    args = parser.parse_args()
    if args.tiny:
        args.duration = TINY
    if args.base:
        summary = asyncio.run(run_load(args.base, args.admin, Path(args.token_file).read_text().strip(),
                                       Path(args.demo), args.pid, args.duration))
    else:
        summary = own_instance(args.duration, args.tiny)
    print(json.dumps(summary, indent=None if args.json else 1))
    return 0 if summary["errors"] == 0 else 1


def own_instance(duration: float, tiny: bool = False) -> dict[str, object]:
    """A demo of 20,000 certificates (``tiny``: 60) served by its own instance (the service and the load: two
    processes)."""
    directory = tiny_demo("rsa") if tiny else demo("soak", "rsa", SIZE)
    config = directory / "annuaire.toml"
    text, base, admin = on_free_ports(config.read_text())
    config.write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "directory.cli", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(base + "/readyz")
        if tiny:
            wait_presigned(base, 0.9 * TINY_CERTS, poll=0.2, timeout=120)
        else:
            time.sleep(60)  # pre-signing of 20,000 responses settles (persisted after the first run)
        token_file = directory / "secrets" / "admin-token"
        load = subprocess.run([sys.executable, "-m", "bench.soak", "--base", base, "--admin",
                               admin, "--token-file", str(token_file),
                               "--demo", str(directory), "--pid", str(proc.pid), "--duration", str(duration),
                               "--json"], capture_output=True, text=True)
        return json.loads(load.stdout)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
