"""``[http]``: the public listener (address, base URL, connection cap, deadlines) and the OCSP caches' sizes."""

from __future__ import annotations

import os
from dataclasses import dataclass

from directory.config.reader import Section, listen_address, parse_size, seconds


@dataclass(frozen=True)
class HttpConfig:
    host: str
    port: int
    base_url: str
    max_connections: int = 4096  # past it, new connections get 503 (file descriptors, memory)
    idle_timeout: float = 15.0  # seconds: idle keep-alive, and incomplete request headers (slow clients)
    request_timeout: float = 10.0  # seconds from a request's first byte to its last (headers and body)
    # bytes; LRU caches that OCSP traffic fills (request bytes -> parsed CertID; live answers other than SHA-1)
    ocsp_request_cache: int = 16 * 1024 * 1024
    ocsp_answer_cache: int = 32 * 1024 * 1024
    # serving processes sharing the public port (SO_REUSEPORT); 1: one process does everything, as before
    workers: int = 1
    # the event loop serving: "auto" (uvloop when installed, else asyncio's own), "uvloop" (required), "asyncio"
    event_loop: str = "auto"


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity, as systemd's CPUAffinity= or a container set it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


OCSP_CACHES = ("ocsp_request_cache", "ocsp_answer_cache")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def http_section(s: Section) -> HttpConfig:
    host, port = listen_address(s, "127.0.0.1:8080")
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    base_url = s.get("base_url", str, f"http://{listen}").rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise s.error("base_url", "must start with http:// or https://")
    max_connections = s.get("max_connections", int, HttpConfig.max_connections)
    if not 1 <= max_connections <= 1_000_000:
        raise s.error("max_connections", "must be between 1 and 1000000")
    caches: dict[str, int] = {}
    for key in OCSP_CACHES:
        if key in s.table:
            try:
                caches[key] = parse_size(s.table[key])
            except ValueError as exc:
                raise s.error(key, str(exc)) from None
            if caches[key] > 1 << 36:
                raise s.error(key, "must be at most 64GiB")
    workers = s.get("workers", int, default_workers())
    if not 1 <= workers <= 256:
        raise s.error("workers", "must be between 1 and 256")
    event_loop = s.get("event_loop", str, HttpConfig.event_loop)
    if event_loop not in EVENT_LOOPS:
        raise s.error("event_loop", f"must be one of {', '.join(EVENT_LOOPS)}")
    return HttpConfig(host, port, base_url, max_connections, seconds(s, "idle_timeout", HttpConfig.idle_timeout),
                      seconds(s, "request_timeout", HttpConfig.request_timeout), workers=workers,
                      event_loop=event_loop, **caches)
