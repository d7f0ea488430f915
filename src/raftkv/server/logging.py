"""Logging setup: structlog, rendered for humans (console) or as JSON lines.

Rules:
- One renderer for everything: structlog loggers and stdlib loggers (aiohttp's, asyncio's) go
  through the same `ProcessorFormatter` on the root handler, so a JSON log is all JSON.
- Timestamps are UTC ISO 8601. Every line carries `level` and `logger`; `bind_node` adds
  `node` to all lines of this process (the cluster scripts interleave three nodes' logs).
- `configure_logging` may be called again (tests, CLI); it replaces its own handler only.
- Nothing on the request hot path logs at info: the access log is on only at debug level.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, TextIO

import structlog
from structlog.typing import Processor

from raftkv.server.config import LogFormat

_HANDLER_NAME: Final = "raftkv"


def configure_logging(level: str, fmt: LogFormat, *, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to `stream` (stderr) at `level` in `fmt`."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    out = stream if stream is not None else sys.stderr
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_isatty(out))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a reconfiguration (tests, CLI) must reach loggers created before it.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp logs every request on aiohttp.access at info; too costly and noisy below debug.
    logging.getLogger("aiohttp.access").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING
    )


def bind_node(node_id: str) -> None:
    """Tag every following log line of this process (and its tasks) with the node id."""
    structlog.contextvars.bind_contextvars(node=node_id)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
