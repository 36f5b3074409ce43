"""structlog, configured once: contextvars first, ISO UTC time, JSON lines (msgspec) off a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import msgspec
import structlog

from exchange.text import json_printable, printable

_encoder = msgspec.json.Encoder()


def _dumps(obj: Any, **_: Any) -> str:
    # Log lines carry request-supplied text (client_id, sub, scope): whoever tails them in a terminal
    # must not receive a control sequence. JSON escapes keep the values exact (exchange/text.py).
    return json_printable(_encoder.encode(obj).decode())


def _printable_strings(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """For the console renderer, which prints strings raw (containers it reprs, which escapes)."""
    return {k: printable(v) if isinstance(v, str) else v for k, v in event.items()}


def configure_logging(*, json: bool | None = None, level: int = logging.INFO) -> None:
    """Idempotent. `json=None` chooses JSON unless stderr is a terminal."""
    use_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps) if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *(() if use_json else (_printable_strings,)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
