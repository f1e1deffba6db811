"""Log output: one JSON object per line for machines (the default off a terminal), or a human line.

Context travels with the event: the request id of the HTTP request being served (a ``ContextVar`` set by
the service middleware, so it follows the request through awaits) and any ``issuer`` / ``serial`` / other
fields passed as ``extra=``. Secrets are never passed to the logger in the first place.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")



def _id_prefix() -> str:
    return os.urandom(8).hex()  # (not uuid: it imports platform, start-up time of every command)


class _RequestIds:
    """New request ids: a random prefix per process (drawn again in a forked child) and a counter, 32 hex
    digits like a UUID's: unique without drawing randomness (a system call) on every request."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix, self.next = _id_prefix(), 0

    def new(self) -> str:
        self.next += 1
        return f"{self.prefix}{self.next:016x}"


_ids = _RequestIds()


def take_request_id(given: str) -> str:
    """The caller's ``X-Request-ID`` when it is a sane token, else a new one."""
    return given if given and _REQUEST_ID.fullmatch(given) else _ids.new()

# LogRecord attributes that are not "extra" context.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        if rid is not None and not hasattr(record, "request_id"):
            record.request_id = rid
        return True


class _ClientErrors(logging.Filter):
    """aiohttp logs a malformed request (over-long line, bad syntax) as an error with a traceback; it is
    the client's error, already answered with a 400: keep one short line at info level instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        from aiohttp.http_exceptions import HttpProcessingError

        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "bad request refused (%s): %s", (exc.code, str(exc.message)[:120])
            record.exc_info = record.exc_text = None
        return True


# Characters that end or rewrite a line in some reader (C0, DEL, C1 incl. NEL, the Unicode line and
# paragraph separators): escaped wherever client bytes may reach a log line, so none can forge one. Lone
# surrogates (undecodable bytes kept by surrogateescape) too: stderr could not even encode them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape(text: str) -> str:
    """``text`` on one line: control characters written as ``\\n``, ``\\x1b``, ``\\u2028``."""
    return _CONTROL.sub(_escape_one, text)


def _json_line(text: str) -> str:
    """json.dumps leaves C1 and U+2028/2029 raw (valid JSON, but line breaks to many readers)."""
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", request_id?, issuer?, serial?, ..., "exc"?}``"""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                event[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return _json_line(json.dumps(event, ensure_ascii=False, separators=(",", ":")))


class HumanFormatter(logging.Formatter):
    """``time LEVEL logger: message [key=value ...]``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = escape(super().formatMessage(record))
        extras = [f"{k}={escape(str(v))}" for k, v in vars(record).items()
                  if k not in _STANDARD and not k.startswith("_")]
        return f"{line} [{' '.join(extras)}]" if extras else line

    def formatException(self, ei: Any) -> str:
        """A traceback keeps its lines, each indented: no line of it can pass for a log line."""
        return "\n".join("  " + escape(line) for line in super().formatException(ei).splitlines())

    def formatStack(self, stack_info: str) -> str:
        return "\n".join("  " + escape(line) for line in stack_info.splitlines())


def setup(level: str = "INFO", fmt: str | None = None) -> None:
    """Configure the root logger once; ``fmt`` is ``json``, ``human`` or None (human on a terminal).

    The choice is exported in ``ANNUAIRE_LOG_FORMAT`` so that child processes (the LDAP worker) log alike.
    """
    if fmt is None:
        fmt = "human" if sys.stderr.isatty() else "json"
    os.environ["ANNUAIRE_LOG_FORMAT"] = fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job run drowns the rest
    logging.getLogger("aiohttp.server").addFilter(_ClientErrors())
