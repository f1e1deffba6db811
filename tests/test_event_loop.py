"""``[http] event_loop``: uvloop when installed ("auto"), asyncio's own loop on request, a clear refusal when
uvloop is asked for and missing. Both loops serving OCSP end to end: tests/test_bench_ocsp.py."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from directory.config import ConfigError, load_config
from directory.service.eventloop import EventLoopUnavailable, loop_factory


def test_auto_takes_uvloop_and_asyncio_stays_asyncio() -> None:
    import uvloop

    name, factory = loop_factory("auto")
    assert name == "uvloop" and factory is uvloop.new_event_loop
    assert loop_factory("uvloop")[0] == "uvloop"
    assert loop_factory("asyncio") == ("asyncio", None)
    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(_loop_type()).startswith("uvloop")


async def _loop_type() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_a_tls_listener_keeps_asyncio() -> None:
    """uvloop loses TLS handshakes started by the gate (directory/service/eventloop.py): not with a TLS listener."""
    assert loop_factory("auto", tls_listener=True) == ("asyncio", None)
    assert loop_factory("asyncio", tls_listener=True) == ("asyncio", None)
    with pytest.raises(EventLoopUnavailable, match="TLS listener"):
        loop_factory("uvloop", tls_listener=True)


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert loop_factory("auto") == ("asyncio", None)
    with pytest.raises(EventLoopUnavailable, match="uvloop cannot be imported"):
        loop_factory("uvloop")


def test_config_names_a_wrong_event_loop(demo: Path) -> None:
    text = demo.read_text()
    assert "\n[http]\n" in text
    for value, ok in (("asyncio", True), ("uvloop", True), ("tokio", False)):
        config = demo.parent / f"loop-{value}.toml"
        config.write_text(text.replace("\n[http]\n", f'\n[http]\nevent_loop = "{value}"\n', 1))
        if ok:
            assert load_config(config).http.event_loop == value
        else:
            with pytest.raises(ConfigError, match="event_loop"):
                load_config(config)
    assert load_config(demo).http.event_loop == "auto"
