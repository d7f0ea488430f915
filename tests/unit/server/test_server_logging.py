"""Logging setup: structlog and stdlib records rendered alike, JSON lines or console text."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from raftkv.server.logging import bind_node, configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access_level = logging.getLogger("aiohttp.access").level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(access_level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_from_structlog_and_stdlib() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    configure_logging("info", "json", stream=out)  # reconfiguring must not duplicate lines
    bind_node("node-2")
    structlog.get_logger("raftkv.test").info("elected", term=3)
    structlog.get_logger("raftkv.test").debug("hidden below info")
    logging.getLogger("aiohttp.server").warning("from %s", "aiohttp")
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("failed")
    logging.getLogger("aiohttp.access").info("GET / 200")  # off below debug

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["elected", "from aiohttp", "failed"]
    first, second, third = lines
    assert first["term"] == 3
    assert first["node"] == "node-2"
    assert first["level"] == "info"
    assert first["logger"] == "raftkv.test"
    assert first["timestamp"].endswith("Z")
    assert second["level"] == "warning"
    assert second["logger"] == "aiohttp.server"
    assert third["exception"][0]["exc_type"] == "ValueError"


@pytest.mark.usefixtures("restore_logging")
def test_console_format_and_debug_level() -> None:
    out = io.StringIO()
    configure_logging("debug", "console", stream=out)
    structlog.get_logger("raftkv.test").debug("tick", n=1)
    logging.getLogger("aiohttp.access").info("GET / 200")
    text = out.getvalue()
    assert "tick" in text
    assert "n=1" in text
    assert "GET / 200" in text
    assert "\x1b[" not in text  # no colours when the stream is not a terminal
