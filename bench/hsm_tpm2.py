"""Threads signing at once on tpm2-pkcs11 (over swtpm + tpm2-abrmd): how many of 8 threads × 25 signatures
succeed, HSM error count, module error lines, signatures/s. ``--tiny``: 4 threads × 5 signatures, one round.

The signing runs in a child process (a module driven without locking can crash it). ``--code DIR`` runs
the child on another checkout of the project (e.g. an older commit extracted with ``git archive``) to
compare before/after on the same simulator.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import arguments, report
from tests.test_hsm_modules import module_errors
from tests.tpm2 import Tpm2Simulator, missing_packages

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"rsa": "rsa2048", "p-256": "ecc256"}

_CHILD = """
import sys, threading, time
import pkcs11
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pkcs11.util.ec import encode_ec_public_key
from pkcs11.util.rsa import encode_rsa_public_key
from asn1crypto import keys
from directory.hsm.signer import HsmSettings, HsmSigner, KeySigner
module, token, pin, label, max_concurrent, n_threads, per_thread = sys.argv[1:8]
hsm = HsmSigner(HsmSettings(module, token, pin, int(max_concurrent)))
with hsm.admin_session() as s:
    pub = s.get_key(object_class=pkcs11.ObjectClass.PUBLIC_KEY, label=label)
    if pub.key_type == pkcs11.KeyType.RSA:
        spki = keys.PublicKeyInfo({"algorithm": {"algorithm": "rsa"},
                                   "public_key": keys.RSAPublicKey.load(encode_rsa_public_key(pub))}).dump()
    else:
        spki = encode_ec_public_key(pub)
key = KeySigner(hsm, label, load_der_public_key(spki), None, label)
ok, failed = [0], []
def work():
    for i in range(int(per_thread)):
        try:
            key.sign(b"x%d" % i); ok[0] += 1
        except Exception as exc:
            failed.append(type(exc).__name__)
threads = [threading.Thread(target=work) for _ in range(int(n_threads))]
started = time.monotonic()
[t.start() for t in threads]; [t.join() for t in threads]
print(f"RESULT {ok[0]} {hsm.stats.errors} {time.monotonic() - started:.3f}", flush=True)
"""


def run(simulator: Tpm2Simulator, token_label: str, pin: str, module: str, label: str, max_concurrent: int,
        code: Path, threads: int = 8, per_thread: int = 25) -> dict[str, object]:
    """One child signing ``threads`` × ``per_thread`` at once: what it managed, what it and the module said."""
    result = subprocess.run([sys.executable, "-c", _CHILD, module, token_label, pin, label, str(max_concurrent),
                             str(threads), str(per_thread)],
                            capture_output=True, text=True, timeout=300, cwd=code,
                            env={**os.environ, **simulator.env})
    found = re.search(r"^RESULT (\d+) (\d+) (\S+)$", result.stdout, re.M)
    row: dict[str, object] = {"key": label, "max_concurrent": max_concurrent, "asked": threads * per_thread,
                              "module_error_lines": len(module_errors(result.stderr))}
    if found is None:
        return {**row, "signed": 0, "crashed": result.returncode}
    ok, seconds = int(found.group(1)), float(found.group(3))
    return {**row, "signed": ok, "hsm_errors": int(found.group(2)), "seconds": seconds, "sig_s": round(ok / seconds, 1)}


def _cells(row: dict[str, object]) -> str:
    if "crashed" in row:
        return f"0 (crashed, exit {row['crashed']}) | - | - | - | {row['module_error_lines']}"
    return (f"{row['signed']}/{row['asked']} | {row['hsm_errors']} | {row['seconds']:.2f} | {row['sig_s']:,.0f} | "
            f"{row['module_error_lines']}")


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--code", type=Path, default=ROOT, help="project checkout the signing child runs")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    threads, per_thread, rounds, limits = (4, 5, 1, (2, 8)) if args.tiny else (8, 25, args.rounds, (2, 8))
    if missing_packages():
        print(f"missing Debian packages: {' '.join(missing_packages())}", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="tpm2-bench-") as tmp:
        simulator = Tpm2Simulator(Path(tmp))
        try:
            simulator.start()
            token = simulator.add_token("bench")
            for label, algorithm in KEYS.items():
                simulator.add_key(token, algorithm, label)
            if not args.json:
                print(f"code: {args.code.resolve()}")
                print("| key | max_concurrent | round | signed | HSM errors | seconds | sig/s | module error lines |")
                print("|---|---|---|---|---|---|---|---|")
            for label in KEYS:
                for max_concurrent in limits:
                    for n in range(rounds):
                        row = run(simulator, token.label, token.pin(), token.module, label, max_concurrent,
                                  args.code, threads, per_thread)
                        rows.append({**row, "round": n + 1})
                        if not args.json:
                            print(f"| {label} | {max_concurrent} | {n + 1} | {_cells(row)} |", flush=True)
                        time.sleep(0.2)
        finally:
            simulator.stop()
    report({"code": str(args.code.resolve()), "threads": threads, "per_thread": per_thread, "rows": rows}, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
