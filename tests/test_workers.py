"""``[http] workers = 2``: serving processes on one port, answers shared through the store, a revocation seen by
every one of them within a second, a crashed one restarted and counted, metrics summed, a clean stop.

The real service, HSM (SoftHSM2) and registry; connections are plain sockets spread by the kernel."""

from __future__ import annotations

import hashlib
import http.client as httpc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from tests.admin_client import call
from tests.conftest import ROOT
from tests.served import http, serve


def _workers(main_pid: int) -> list[int]:
    """Pids of the serving processes (children of the main process running directory.service.worker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == main_pid and b"directory.service.worker" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def _established(port: int) -> set[int]:
    """Socket inodes of established TCP connections on the service's side of ``port``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
            inodes.add(int(fields[9]))
    return inodes


def _holding(pid: int, inodes: set[int]) -> int:
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        found = re.fullmatch(r"socket:\[(\d+)\]", target)
        held += bool(found and int(found.group(1)) in inodes)
    return held


def _request(demo: Path, entry: dict[str, str]) -> bytes:
    issuer = x509.load_pem_x509_certificate((demo / "ca" / f"{entry['issuer']}.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((demo / "certs" / entry["file"]).read_bytes())
    return ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build().public_bytes(
        serialization.Encoding.DER)


def _status(conn: httpc.HTTPConnection, body: bytes) -> ocsp.OCSPCertStatus:
    conn.request("POST", "/ocsp", body=body, headers={"Content-Type": "application/ocsp-request"})
    response = conn.getresponse()
    answer = ocsp.load_der_ocsp_response(response.read())
    assert response.status == 200 and answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    return answer.certificate_status


def _get(url: str) -> tuple[int, dict, bytes]:
    """One GET, tried twice: a connection the kernel had queued for a process just killed is reset with it
    (it was never accepted); the next one goes to a live process."""
    try:
        return http(url)
    except (urllib.error.URLError, ConnectionError):
        return http(url)


def _answered(url: str) -> bool:
    return _get(url)[0] == 200


def _metric(base: str, line_start: str) -> float:
    lines = [x for x in _get(base + "/metrics")[2].decode().splitlines() if x.startswith(line_start)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_serving_processes_share_answers_see_revocations_and_restart(demo: Path) -> None:
    demo.write_text(demo.read_text().replace("[http]\n", "[http]\nworkers = 2\n", 1))
    root = demo.parent
    token = (root / "secrets" / "admin-token").read_text().strip()
    manifest = json.loads((root / "certs" / "manifest.json").read_text())
    good = [m for m in manifest if m["issuer"] == "ac-personnes" and m["status"] == "good"]
    with serve(demo) as served:
        workers = _workers(served.proc.pid)
        assert len(workers) == 2, workers
        port = int(served.base.rsplit(":", 1)[1])
        target = good[0]
        body = _request(root, target)
        # every pre-signed answer is there (the pre-signer runs in the main process), both processes listen
        # (/readyz says ready as soon as one does)
        deadline = time.monotonic() + 30
        while _metric(served.base, 'annuaire_http_workers{state="serving"}') < 2:
            assert time.monotonic() < deadline, "the second serving process never listened"
            time.sleep(0.2)
        while _metric(served.base, 'annuaire_ocsp_cached_responses{issuer="ac-personnes"}') < len(
                [m for m in manifest if m["issuer"] == "ac-personnes"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        conns = [httpc.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(16)]
        before = _metric(served.base, 'annuaire_ocsp_responses_by_path_total{path="presigned"}')
        for conn in conns:
            assert _status(conn, body) == ocsp.OCSPCertStatus.GOOD
        # the kernel spread the connections: each serving process holds some of them
        inodes = _established(port)
        assert all(_holding(pid, inodes) > 0 for pid in workers), [_holding(pid, inodes) for pid in workers]
        # /metrics sums the processes' counts, up to the scrape
        after = _metric(served.base, 'annuaire_ocsp_responses_by_path_total{path="presigned"}')
        assert after - before >= len(conns)

        # a revocation through the admin API: every connection (so every process) says revoked within 1 s
        status, _, _ = call(served.admin, "POST", "/api/v1/revocations",
                            {"issuer": "ac-personnes", "serial": target["serial_hex"], "reason": "keyCompromise"},
                            token=token)
        assert status == 201
        revoked_at = time.monotonic()
        pending = set(range(len(conns)))
        while pending and time.monotonic() - revoked_at < 5:
            for n in sorted(pending):
                if _status(conns[n], body) == ocsp.OCSPCertStatus.REVOKED:
                    pending.discard(n)
        seen = time.monotonic() - revoked_at
        print(f"revocation stated on all {len(conns)} connections {seen:.3f} s after the admin API answered")
        assert not pending and seen < 1.0, (pending, seen)
        for conn in conns:
            conn.close()

        # a serving process killed: restarted, logged, counted; the service keeps answering meanwhile
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = _workers(served.proc.pid)
            serving = _metric(served.base, 'annuaire_http_workers{state="serving"}')
            if len(now) == 2 and workers[0] not in now and serving == 2:
                break
            assert _answered(served.base + "/healthz")
            time.sleep(0.2)
        else:
            raise AssertionError("the serving process was not restarted")
        assert _metric(served.base, "annuaire_http_worker_restarts_total") == 1
        assert http(served.base + "/readyz")[0] == 200
        # what the other process served before the kill is still counted (counters only go up)
        assert _metric(served.base, 'annuaire_ocsp_responses_by_path_total{path="presigned"}') >= after
        # a nonce request (signed live, in the main process) and a page of the main application, through a worker
        conn = httpc.HTTPConnection("127.0.0.1", port, timeout=10)
        nonce = ocsp.OCSPRequestBuilder().add_certificate(
            x509.load_pem_x509_certificate((root / "certs" / good[1]["file"]).read_bytes()),
            x509.load_pem_x509_certificate((root / "ca" / "ac-personnes.pem").read_bytes()), hashes.SHA1()
        ).add_extension(x509.OCSPNonce(os.urandom(16)), critical=False).build()
        conn.request("POST", "/ocsp", body=nonce.public_bytes(serialization.Encoding.DER),
                     headers={"Content-Type": "application/ocsp-request"})
        answer = ocsp.load_der_ocsp_response(conn.getresponse().read())
        assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == \
            nonce.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        conn.close()
        status, _, crl = http(served.base + "/crl/ac-personnes.crl")
        assert status == 200 and x509.load_der_x509_crl(crl).get_revoked_certificate_by_serial_number(
            int(good[2]["serial_hex"], 16)) is None
        # what a client may send through a serving process: the main process's private routes are not
        # reachable, bodies stay bounded, odd framing is refused, nothing is a 5xx, and the service still answers
        assert http(served.base + "/live", method="POST", body=b"x", headers={"X-Ocsp-Kind": "post"})[0] in (404, 405)
        assert http(served.base + "/ocsp", method="POST", body=b"0" * 11000,
                    headers={"Content-Type": "application/ocsp-request"})[0] == 413
        assert http(served.base + "/crl/ac-personnes.crl", method="POST", body=b"0" * 200_000)[0] in (405, 413)
        for raw in (b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
                    b"0\r\n\r\n",
                    b"GET /crl/ac-personnes.crl HTTP/1.1\r\nHost: x\r\nConnection: close, X-Secret\r\n"
                    b"X-Secret: 1\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(raw)
                first = s.recv(4096).split(b"\r\n", 1)[0]
            assert re.fullmatch(rb"HTTP/1\.[01] [1-4]\d\d .*", first), first
        assert http(served.base + "/healthz")[0] == 200

        # a serving process that stops reporting (its loop stuck: SIGSTOP here) is killed and replaced
        stuck = _workers(served.proc.pid)[0]
        os.kill(stuck, signal.SIGSTOP)
        deadline = time.monotonic() + 40
        while stuck in _workers(served.proc.pid) or len(_workers(served.proc.pid)) < 2:
            assert time.monotonic() < deadline, "a silent serving process was not replaced"
            time.sleep(0.5)
        assert _metric(served.base, "annuaire_http_worker_restarts_total") == 2
        remaining = _workers(served.proc.pid)
    output = served.output
    assert "exited with code -9: restarted" in output
    assert "silent for 16 s: killed" in output
    # a clean stop: no serving process outlives the main one, and the shared store (a cache) is gone
    assert all(not Path(f"/proc/{pid}").exists() for pid in remaining)
    assert not (root / "data" / "ocsp-answers.lmdb").exists()


def test_a_serving_process_refuses_a_configuration_changed_since_the_start(demo: Path, tmp_path: Path) -> None:
    """Restarted after the operator edited the file, it would serve another configuration than the main
    process's: it says so and exits (EX_CONFIG) instead; restarting the service applies the change."""
    result = subprocess.run([sys.executable, "-m", "directory.service.worker", "--config", str(demo), "--index", "0",
                             "--workers", "2", "--sockets", str(tmp_path), "--store", str(tmp_path / "none.lmdb"),
                             "--config-sha256", hashlib.sha256(b"what the main process read").hexdigest()],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 78, result.stderr[-2000:]
    assert "changed since `annuaire serve` started" in result.stderr and result.stdout == ""
