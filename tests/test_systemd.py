"""systemd's notify protocol (directory/service/systemd.py), checked with real datagram sockets: READY=1 only
once readiness is clear (as /readyz reports it), WATCHDOG=1 fed by the event loop (and stopping when the loop
is stuck), STOPPING=1 on SIGTERM; the served process under a NOTIFY_SOCKET bound by the test, with its
secrets from $CREDENTIALS_DIRECTORY as LoadCredential= provides them."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from directory.service.systemd import Notifier
from tests.served import http, serve


class Listener:
    """A datagram socket standing in for systemd's: every message received, with its arrival time."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self.closed = False
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def times(self, field: str) -> list[float]:
        return [at for at, text in self.messages if field in text.split("\n")]

    def wait_for(self, field: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while not self.times(field):
            assert time.monotonic() < deadline, f"no {field} within {timeout} s: {self.messages}"
            time.sleep(0.01)
        return self.times(field)[0]

    def close(self) -> None:
        self.closed = True
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture()
def listener(tmp_path: Path) -> Iterator[Listener]:
    server = Listener(f"@annuaire-test-{os.getpid()}-{id(tmp_path)}")
    try:
        yield server
    finally:
        server.close()


def test_environment_is_read_once_and_removed() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid()),
           "OTHER": "kept"}
    notifier = Notifier.from_environment(env)
    assert (notifier.address, notifier.watchdog_seconds) == ("/run/systemd/notify", 3.0)
    assert env == {"OTHER": "kept"}  # children (the LDAP worker, slapd) do not inherit them
    other_pid = Notifier.from_environment({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other_pid.address == "@x" and other_pid.watchdog_seconds is None
    for bad in ({"NOTIFY_SOCKET": "relative/path"}, {}):
        assert Notifier.from_environment(bad).address is None
    assert Notifier.from_environment({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "soon"}).watchdog_seconds is None
    assert Notifier(None).send("READY=1") is False  # not under systemd: nothing sent, nothing raised


async def test_ready_is_withheld_while_readiness_reports_problems(listener: Listener) -> None:
    answers = [{"crl": "ac-racine.crl not published"}, {"crl": "ac-racine.crl not published"},
               {"hsm": "token absent"}, {}]
    asked: list[float] = []

    async def readiness() -> dict[str, str]:
        asked.append(time.monotonic())
        return answers[len(asked) - 1]

    await Notifier(listener.address).ready_when(readiness, interval=0.05)
    ready_at = listener.wait_for("READY=1", 2)
    assert ready_at >= asked[-1]  # sent after the one answer without problems, not before
    texts = [text for _, text in listener.messages]
    assert texts == ["STATUS=not ready: crl: ac-racine.crl not published",  # said once, not at every poll
                     "STATUS=not ready: hsm: token absent", "READY=1\nSTATUS=ready"]


async def test_watchdog_pings_stop_while_the_event_loop_is_stuck(listener: Listener) -> None:
    notifier = Notifier(listener.address, watchdog_seconds=0.2)  # a ping every 0.1 s
    task = asyncio.create_task(notifier.feed_watchdog())
    await asyncio.sleep(0.45)
    assert len(listener.times("WATCHDOG=1")) >= 4
    time.sleep(0.6)  # the loop blocked: a stuck loop is what the watchdog is for
    blocked_until = time.monotonic()
    await asyncio.sleep(0.15)
    task.cancel()
    pings = listener.times("WATCHDOG=1")
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) >= 0.55  # no ping while blocked: systemd would have killed it past WatchdogSec
    assert any(at >= blocked_until for at in pings)  # and the pings resume with the loop


def _directory_has_people(url: str) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", url, "-b", "o=sante,c=fr",
                                "(objectClass=pkiUser)", "1.1"], capture_output=True, text=True)
        if found.stdout.count("dn: ") >= 10:
            return True
        time.sleep(0.2)
    return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _secrets_as_credentials(config: Path, credentials: Path) -> None:
    """What deploy/systemd/annuaire.service does: each secret a LoadCredential=, named in the config."""
    credentials.mkdir(mode=0o700)
    text = config.read_text()
    for key, name in (("pin_file", "hsm-pin"), ("password_file", "ldap-password"), ("token_file", "admin-token")):
        line = next(line for line in text.splitlines() if line.startswith(f"{key} = "))
        (credentials / name).write_bytes((config.parent / line.split('"')[1]).read_bytes())
        (credentials / name).chmod(0o400)
        text = text.replace(line, f'{key} = "credential:{name}"')
    config.write_text(text)


def test_served_process_notifies_ready_feeds_the_watchdog_and_says_stopping(demo: Path, tmp_path: Path) -> None:
    """As under deploy/systemd/annuaire.service: Type=notify, WatchdogSec=, secrets from LoadCredential=."""
    _secrets_as_credentials(demo, tmp_path / "credentials")
    address = str(tmp_path / "notify")  # a path, as systemd's own /run/systemd/notify
    listener = Listener(address)
    try:
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000",  # WatchdogSec=1s: a ping every 0.5 s
               "CREDENTIALS_DIRECTORY": str(tmp_path / "credentials")}
        with serve(demo, ready=False, env=env) as running:
            ready_at = listener.wait_for("READY=1", 60)
            status, _, body = http(running.base + "/readyz")
            assert status == 200, body  # READY=1 means what /readyz says
            assert listener.times("WATCHDOG=1")[0] <= ready_at  # fed from the start, not only once ready
            time.sleep(1.6)
            assert len([t for t in listener.times("WATCHDOG=1") if t > ready_at]) >= 3
            # the LDAP worker and the managed slapd are children of serve; neither sees NOTIFY_SOCKET
            children = _children(running.proc.pid)
            assert len(children) >= 2, children
            for child in children:
                assert b"NOTIFY_SOCKET=" not in Path(f"/proc/{child}/environ").read_bytes(), child
            # the LDAP worker read its bind password from the credentials too: the directory got the demo
            assert _directory_has_people(running.ldap_url)
            running.stop()
            assert running.proc.returncode == 0
        assert len(listener.times("READY=1")) == 1
        assert listener.times("STOPPING=1"), listener.messages
    finally:
        listener.close()
