"""The strict readers of hostile or careless input: times, JSON bodies, HTTP dates and
ranges, log lines, files in the CRL folder; and the admin API's last-resort handler, which audits."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from directory import inputs, logs
from directory.crl.files import NotRegularFile, read_regular
from directory.crl.http import byte_range
from directory.httpdate import http_date, parse_http_date


def _ts(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


def test_rfc3339_times() -> None:
    assert inputs.parse_time("2026-11-28T10:00:00Z") == _ts(2026, 11, 28, 10)
    assert inputs.parse_time("2026-11-28t11:30:00.999+01:30") == _ts(2026, 11, 28, 10)
    assert inputs.parse_time("1950-01-01T00:00:00Z") == inputs.MIN_TIME
    assert inputs.parse_time("2026-11-28T10:00:00", assume_utc=True) == _ts(2026, 11, 28, 10)
    for bad in ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00+00:01", "1949-12-31T23:59:59Z",
                "9999-12-31T23:59:59-00:01", "2020W011T000000Z", "2020-W01-1T00:00:00Z", "2026-332T00:00:00Z",
                "20261128T100000Z", "2026-11-28T10:00:00", "2026-11-28 10:00:00Z", "2026-02-30T00:00:00Z",
                "2026-11-28T24:00:00Z", "2026-11-28T10:00:60Z", "2026-11-28T10:00:00+24:00", "2026-11-28T10:00:00Z\n",
                "\u0662\u0660\u0662\u0666-11-28T10:00:00Z", "", "x" * 5000):
        with pytest.raises(inputs.InputError):
            inputs.parse_time(bad)
    # the one way a time is written back (CLI, admin API, crl show, messages); unset stays unset
    assert inputs.format_time(_ts(2026, 11, 28, 10)) == "2026-11-28T10:00:00Z"
    assert inputs.format_time(inputs.MAX_TIME) == "9999-12-31T23:59:59Z" and inputs.format_time(None) is None


def test_json_bodies_are_bounded_before_parsing() -> None:
    assert inputs.load_json(b'{"a": [1, {"b": "[[[[{{{{"}], "c": "\\\\\\""}') == {"a": [1, {"b": "[[[[{{{{"}],
                                                                                   "c": '\\"'}
    assert inputs.load_json(b"[" * 32 + b"]" * 32) is not None
    for bad, why in ((b"[" * 100_000 + b"]" * 100_000, "nested"), (b"[" * 33 + b"]" * 33, "nested"),
                     (b'{"a": "\xff"}', "UTF-8"), (b"1" * 5000, "not JSON"), (b"{not json", "not JSON")):
        with pytest.raises(inputs.InputError, match=why):
            inputs.load_json(bad)


def test_http_dates_and_ranges() -> None:
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", now=_ts(2026, 1, 1)) == 784111777
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == 784111777
    assert parse_http_date(http_date(_ts(2026, 9, 21, 14, 13, 20))) == _ts(2026, 9, 21, 14, 13, 20)
    for bad in ("Sun, 06 Nov 1994 08:49:37 +99999999999999999999", "Sun, 31 Feb 1994 08:49:37 GMT",
                "Sun, 06 Nov 0000 08:49:37 GMT", "Sun, 06 Nov 1994 25:49:37 GMT", "1994-11-06", "", "x" * 5000):
        assert parse_http_date(bad) is None, bad
    digits = "9" * 5000
    assert byte_range("bytes=0-9", 100) == (0, 9)
    assert byte_range("bytes=90-", 100) == (90, 99)
    assert byte_range("bytes=-10", 100) == (90, 99)
    assert byte_range("bytes=50-500", 100) == (50, 99)
    assert byte_range(f"bytes=-{digits}", 100) == (0, 99)
    assert byte_range(f"bytes=0-{digits}", 100) == (0, 99)
    assert byte_range(f"bytes={digits}-", 100) == "unsatisfiable"
    assert byte_range("bytes=100-", 100) == "unsatisfiable"
    assert byte_range("bytes=-0", 100) == "unsatisfiable"
    for ignored in ("bytes=10-5", "bytes=0-1,5-6", "bytes=\u00b2-", "bytes=\u0663-", "items=0-1", "bytes=-",
                    "bytes=0-1\n"):
        assert byte_range(ignored, 100) is None, ignored


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("directory.admin.api", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


FORGED = "\n2026-11-29 10:00:00,000 WARNING directory.admin.api: forged\u2028second\x85third\x1b[31m\r\udcff"


def test_log_lines_cannot_be_forged() -> None:
    record = _record("admin API: %s %s refused", "GET", "/api/v1/x" + FORGED, remote="1.2.3.4" + FORGED)
    line = logs.JsonFormatter().format(record)
    assert len(line.splitlines()) == 1 and "\u2028" not in line and "\x85" not in line
    line.encode("utf-8")  # no lone surrogate left to break the stream
    event = json.loads(line)
    assert event["msg"].endswith(FORGED + " refused") and event["remote"] == "1.2.3.4" + FORGED
    human = logs.HumanFormatter().format(_record("admin API: %s %s refused", "GET", "/x" + FORGED,
                                                 remote="r" + FORGED))
    assert len(human.splitlines()) == 1 and "\x1b" not in human, human
    assert "/x\\n2026-11-29" in human and "\\u2028second\\x85third\\x1b[31m\\r\\udcff" in human
    human.encode("utf-8")
    try:
        raise ValueError("boom" + FORGED)
    except ValueError:
        failing = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = logs.HumanFormatter().format(failing).splitlines()
    assert lines[0].endswith("failed") and all(line.startswith("  ") for line in lines[1:]), lines


def test_only_regular_files_are_read_from_the_crl_folder(tmp_path: Path) -> None:
    regular = tmp_path / "a.crl"
    regular.write_bytes(b"0" * 10)
    assert read_regular(regular) == b"0" * 10
    fifo = tmp_path / "fifo.crl"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(NotRegularFile):
        read_regular(fifo)  # would block forever waiting for a writer if it were opened as a file
    assert time.monotonic() - started < 1
    (tmp_path / "dir.crl").mkdir()
    with pytest.raises(NotRegularFile):
        read_regular(tmp_path / "dir.crl")
    with pytest.raises(OSError, match="larger than"):
        read_regular(regular, max_bytes=5)
    link = tmp_path / "link.crl"
    link.symlink_to(fifo)
    with pytest.raises(NotRegularFile):
        read_regular(link)


def test_the_admin_last_resort_handler_answers_and_audits(tmp_path: Path) -> None:
    """A bug in a handler (any exception) is a 500 with the request id, and the call is in the audit
    chain with its status and the failure's type; the chain still verifies."""
    from directory.admin.api import AdminComponent
    from directory.registry import Registry

    registry = Registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    component = AdminComponent()
    component.service = SimpleNamespace(registry=registry)  # type: ignore[assignment]
    component.config = SimpleNamespace(max_body=1024)  # type: ignore[assignment]
    component.credentials = SimpleNamespace(identify=lambda request: "admin:token")  # type: ignore[assignment]

    async def broken(request: web.Request) -> web.Response:
        raise KeyError("a bug")

    async def run() -> web.StreamResponse:
        request = make_mocked_request("GET", "/api/v1/certificates/ac/1", headers={"Authorization": "Bearer x"})
        return await component._authenticated(request, broken)

    response = asyncio.run(run())
    assert response.status == 500
    body = json.loads(response.body)  # type: ignore[arg-type]
    assert body["error"] == "internal error" and "KeyError" in body["detail"]
    calls = [r for r in registry.audit_records() if r["action"] == "api-call"]
    assert len(calls) == 1 and calls[0]["actor"] == "admin:token"
    after = json.loads(calls[0]["after"])
    assert after["status"] == 500 and after["failure"] == "KeyError" and after["path"] == "/api/v1/certificates/ac/1"
    from directory.registry.audit import verify_chain

    assert verify_chain(registry.audit_records()).ok
    registry.close()
