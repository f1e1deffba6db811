"""Raw HSM signatures/s: our signer vs direct python-pkcs11 calls on the same token and key.

Both sides sign a 1 KiB message. Direct: ``SHA256_RSA_PKCS`` (RSA) or host SHA-256 + raw ``ECDSA`` (EC,
the only EC mechanism SoftHSM2 has), one session per thread. Ours: ``KeySigner.sign`` (host hash,
raw mechanism, DER conversion for ECDSA, and verification of every signature against the certificate).
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import threading
import time
from pathlib import Path

import pkcs11
from cryptography import x509

from bench.common import arguments, demo, report, tiny_demo
from directory.hsm.signer import HsmSettings, HsmSigner, ecdsa_der

DURATION = 2.0
ROUNDS = 5
TINY = (0.2, 1)  # --tiny: seconds per sample, rounds
MESSAGE = b"m" * 1024


def _rate(worker, threads: int, duration: float) -> float:  # type: ignore[no-untyped-def]
    counts = [0] * threads
    stop = time.monotonic() + duration

    def run(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            worker()
            n += 1
        counts[i] = n

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    start = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.monotonic() - start)


def bench(directory: Path, label: str, kind: str, duration: float | None = None,
          rounds: int | None = None) -> list[tuple[str, int, float, float, float]]:
    """Rows (key, threads, direct, signer, machinery sig/s); DURATION and ROUNDS read at the call (bench.ocsp
    sets them)."""
    duration = DURATION if duration is None else duration
    rounds = ROUNDS if rounds is None else rounds
    pin = (directory / "hsm" / "pin").read_text().strip()
    hsm = HsmSigner(HsmSettings("/usr/lib/softhsm/libsofthsm2.so", "annuaire-demo", pin, 2,
                                softhsm2_conf=str(directory / "hsm" / "softhsm2.conf")))
    cert = x509.load_pem_x509_certificate((directory / "ca" / f"{label}.pem").read_bytes())
    ours = hsm.key(label, cert)
    token = hsm._module.lib.get_token(token_label="annuaire-demo")  # same module, OS locking already on
    local = threading.local()

    def direct() -> None:
        key = getattr(local, "key", None)
        if key is None:
            session = token.open()
            local.session = session  # logged in already: login state is per application
            key = local.key = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=label)
        if kind == "rsa":
            key.sign(MESSAGE, mechanism=pkcs11.Mechanism.SHA256_RSA_PKCS)
        else:
            key.sign(hashlib.sha256(MESSAGE).digest(), mechanism=pkcs11.Mechanism.ECDSA)

    def signer() -> None:
        ours.sign(MESSAGE)

    def machinery() -> None:  # our path without the mandatory verification, to show where the cost is
        raw = hsm.sign_raw(label, ours.algorithm, ours.algorithm.token_input(hashlib.sha256(MESSAGE).digest()))
        if kind == "ec":
            ecdsa_der(raw)

    ours.sign(MESSAGE)  # opens the session that logs in
    rows = []
    for threads in (1, 2):
        # interleave the three variants over several rounds and keep the median: this machine is noisy
        samples: dict[str, list[float]] = {"direct": [], "signer": [], "machinery": []}
        variants = [("direct", direct), ("signer", signer), ("machinery", machinery)]
        for round_ in range(rounds):
            for name, fn in variants[round_ % 3:] + variants[: round_ % 3]:
                samples[name].append(_rate(fn, threads, duration))
        d, o, m = (statistics.median(samples[k]) for k in ("direct", "signer", "machinery"))
        rows.append((f"{kind}", threads, d, o, m))
    hsm.close()
    return rows


def main() -> int:
    args = arguments(__doc__).parse_args()
    duration, rounds = TINY if args.tiny else (DURATION, ROUNDS)
    rsa, ec = (tiny_demo("rsa"), tiny_demo("ec")) if args.tiny else (demo("hsm-rsa", "rsa"), demo("hsm-ec", "ec"))
    rows = bench(rsa, "ac-personnes", "rsa", duration, rounds) + bench(ec, "ac-personnes", "ec", duration, rounds)
    lines = ["| key | threads | direct python-pkcs11 sig/s | annuaire signer (verifies each) sig/s | overhead |"
             " signer without the verification step sig/s | overhead |", "|---|---|---|---|---|---|---|"]
    for kind, threads, d, o, m in rows:
        name = "RSA-2048" if kind == "rsa" else "P-256"
        lines.append(f"| {name} | {threads} | {d:,.0f} | {o:,.0f} | {100 * (d - o) / d:+.1f}% | {m:,.0f} |"
                     f" {100 * (d - m) / d:+.1f}% |")
    report({"seconds_per_sample": duration, "rounds": rounds,
            "rows": [{"key": kind, "threads": threads, "direct_sig_s": round(d, 1), "signer_sig_s": round(o, 1),
                      "machinery_sig_s": round(m, 1), "signer_overhead": round((d - o) / d, 4)}
                     for kind, threads, d, o, m in rows]}, args, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
