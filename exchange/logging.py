"""One log stream: our structlog events and every stdlib record (granian, httpx, `exchange.verify`)
leave through one renderer, as JSON lines on stderr (or structlog's console renderer on a terminal).

structlog is configured once: contextvars first, level, logger name, ISO UTC time, then the renderer.
Stdlib records get the same keys (`event`, `level`, `logger`, `timestamp`) from `StdlibFormatter`:
a record whose message follows our `event key=%s key=%d` convention (as `exchange.verify` logs, so
that library users keep plain stdlib logging) becomes that event with those fields; granian's access
records become `http_access` with their fields; anything else keeps its text as the event.

`exchange serve` decides JSON or console once, in the parent, and hands the choice to its workers
through $EXCHANGE_LOG_FORMAT, so every process of one server writes the same format.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import logging
import os
import re
import select
import sys
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, Final, Literal, TextIO

import msgspec
import structlog

from exchange.text import json_printable, printable
from schemas.config import LoggingConfig

FORMAT_ENV: Final = "EXCHANGE_LOG_FORMAT"
# `exchange --debug ...`: failures show their traceback too (a server's workers inherit it).
DEBUG_ENV: Final = "EXCHANGE_DEBUG"
LogFormat = Literal["auto", "json", "console"]
# Per-request chatter of the HTTP client: our own jwks_* events already say what it would.
_QUIET: Final = ("httpx", "httpcore")
_EVENT_TEMPLATE: Final = re.compile(r"([a-z][a-z0-9_]*)((?: [a-z_][a-z0-9_]*=%[-#0-9.]*[sdifr])*)")
_FIELD: Final = re.compile(r" ([a-z_][a-z0-9_]*)=%")
_encoder = msgspec.json.Encoder()


def _dumps(obj: Any, **_: Any) -> str:
    # Log lines carry request-supplied text (client_id, sub, scope): whoever tails them in a terminal
    # must not receive a control sequence. JSON escapes keep the values exact (exchange/text.py).
    return json_printable(_encoder.encode(obj).decode())


def _printable_strings(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """For the console renderer, which prints strings raw (containers it reprs, which escapes)."""
    return {k: printable(v) if isinstance(v, str) else v for k, v in event.items()}


def wants_json(fmt: LogFormat | str | None = None, stream: TextIO | None = None) -> bool:
    """JSON unless asked for console, or (auto) unless the stream is a terminal."""
    if fmt in (None, "auto"):
        fmt = os.environ.get(FORMAT_ENV) or "auto"  # the server's parent decided for all its processes
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    return not (stream or sys.stderr).isatty()


def _renderer(json: bool) -> Any:
    if json:
        return structlog.processors.JSONRenderer(serializer=_dumps)
    console = structlog.dev.ConsoleRenderer()

    def render(logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
        return console(logger, name, dict(_printable_strings(logger, name, event)))

    return render


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger that knows its name, so our lines carry `logger` like stdlib ones do."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _LoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedPrintLogger:
        return _NamedPrintLogger(self._file, str(args[0]) if args else "exchange")


def _add_logger_name(logger: Any, _: str, event_dict: Any) -> Any:
    event_dict.setdefault("logger", getattr(logger, "name", "exchange"))
    return event_dict


def _value(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The event and fields of a stdlib record (see the module docstring)."""
    args = record.args
    if record.name == "granian.access" and isinstance(args, dict):
        return {"event": "http_access", **{k: _value(v) for k, v in args.items()}}
    msg = record.msg
    if isinstance(msg, str) and isinstance(args, tuple):
        match = _EVENT_TEMPLATE.fullmatch(msg)
        names = _FIELD.findall(match.group(2)) if match else []
        if match and len(names) == len(args):
            return {"event": match.group(1), **{n: _value(a) for n, a in zip(names, args, strict=True)}}
    return {"event": record.getMessage()}


class StdlibFormatter(logging.Formatter):
    """Renders stdlib records exactly like our structlog events. `json=None` follows $EXCHANGE_LOG_FORMAT
    (this is also the factory granian's dictConfig names, in processes where we configure nothing else)."""

    def __init__(self, json: bool | None = None) -> None:
        super().__init__()
        self._render = _renderer(wants_json() if json is None else json)
        self._exc = structlog.processors.format_exc_info

    def format(self, record: logging.LogRecord) -> str:
        event: Any = record_fields(record)
        event["level"] = record.levelname.lower()
        event["logger"] = record.name
        stamp = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        event["timestamp"] = stamp.isoformat().replace("+00:00", "Z")
        if record.exc_info:
            event["exc_info"] = record.exc_info
            event = self._exc(None, record.levelname.lower(), event)
        return str(self._render(None, record.levelname.lower(), event))


def _level(level: int | str) -> int:
    return level if isinstance(level, int) else logging.getLevelNamesMapping()[level.upper()]


def configure_logging(*, json: bool | None = None, level: int | str = logging.INFO) -> None:
    """Idempotent. `json=None` follows $EXCHANGE_LOG_FORMAT, else JSON unless stderr is a terminal."""
    global _fast
    use_json = wants_json() if json is None else json
    numeric = _level(level)
    # RequestLine writes what this chain renders in JSON at info: change one, change the other.
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _renderer(use_json),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_LoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    _fast = (tuple(processors), sys.stderr) if use_json and numeric <= logging.INFO else None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StdlibFormatter(json=use_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    # granian's own loggers do not propagate: give them our handler too (their levels stay theirs).
    for name in ("_granian", "granian.access"):
        logging.getLogger(name).handlers[:] = [handler]


def configure_from(config: LoggingConfig) -> None:
    """configure_logging as the `[logging]` section says."""
    configure_logging(json=wants_json(config.format), level=config.level)


def granian_log_config(level: int | str = logging.INFO) -> dict[str, Any]:
    """granian's dictConfig: its main process and workers log through our formatter, to stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"exchange": {"()": "exchange.logging.StdlibFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "exchange",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "_granian": {"handlers": ["stderr"], "level": _level(level), "propagate": False},
            "granian.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": _level(level)},
    }


class RequestLine:
    """The one canonical line per request on a hot path (the exchange's decision, the ambassador, the
    gateway), at a fraction of structlog's cost (its bound-logger machinery and processor calls were ~14%
    of the ambassador's CPU, and ~8% of an exchange's).

    The line is the one structlog renders under `configure_logging(json=True)`: the bound context
    variables (`merge_contextvars`, the same function), the fields, `event`, `level`, `logger`, the ISO
    UTC `timestamp` (what structlog's TimeStamper writes, from a per-second cached prefix), encoded by
    the same `_dumps` and written to the same stream. `immediate=True` (the exchange's decision line):
    each line is written and flushed before `info` returns, so it is in the stream before the answer is
    sent (tests and operators read the line right after the answer); inside `batched_lines()` (the audit
    writer's, for the decisions of one committed batch) it is written when that block ends, together
    with the others, before any of their answers can be sent. Otherwise, inside an event loop the
    lines of one loop turn leave together, one write and a flush scheduled with `call_soon`, so before
    the loop next waits for I/O (nginx's buffered access_log, without its delay); outside one, each line
    at once. Whenever structlog is configured any other way (the console renderer, a level above info, a
    test's `capture_logs`), or a field would need another processor (`exc_info`), the event goes to
    structlog unchanged.
    """

    __slots__ = ("_immediate", "_logger", "_name")

    def __init__(self, name: str, *, immediate: bool = False) -> None:
        self._name = name
        self._logger = structlog.get_logger(name)
        self._immediate = immediate

    def info(self, event: str, **fields: Any) -> None:
        self.emit(event, fields)

    def emit(self, event: str, fields: dict[str, Any]) -> None:
        """`info(event, **fields)`, taking `fields` over (the caller's dict becomes the line)."""
        fast = _fast
        # The chain must still be the one configured (capture_logs, for one, swaps its contents in place).
        if fast is None or "exc_info" in fields or tuple(structlog.get_config()["processors"]) != fast[0]:
            self._logger.info(event, **fields)
            return
        line: MutableMapping[str, Any] = structlog.contextvars.merge_contextvars(None, "info", fields)
        line["event"] = event
        line["level"] = "info"
        line.setdefault("logger", self._name)
        line["timestamp"] = iso_utc_now()
        text = _dumps(line) + "\n"
        if self._immediate:
            if _holding[0]:  # inside batched_lines(): written when it ends, before anyone resumes
                _pending.append(text)
                return
            if _pending:  # lines of this turn queued before it keep their place in the stream
                text = "".join(_pending) + text
                _pending.clear()
            _write(fast[1], text)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: nothing to batch with
            _write(fast[1], text)
            return
        # The lines of one event-loop turn leave in one write at its end (a write per line was half
        # the line's cost): bounded by what one turn does, and by _BATCH_LINES.
        _pending.append(text)
        if len(_pending) == 1:
            loop.call_soon(_flush_pending, fast[1])
        elif len(_pending) >= _BATCH_LINES:
            _flush_pending(fast[1])


_second: list[Any] = [None, ""]  # [the Unix second, its "YYYY-MM-DDTHH:MM:SS" in UTC]


def iso_utc_now() -> str:
    """Now as structlog's `TimeStamper(fmt="iso", utc=True)` writes it (`datetime.isoformat()` in UTC,
    microseconds, `Z`), with the date and time of the current second formatted once per second."""
    now = time.time()
    second = int(now)
    micro = round((now - second) * 1_000_000)
    if micro >= 1_000_000:
        second, micro = second + 1, 0
    if _second[0] != second:
        stamp = datetime.datetime.fromtimestamp(second, tz=datetime.UTC).isoformat()
        _second[:] = [second, stamp.removesuffix("+00:00")]
    return f"{_second[1]}.{micro:06d}Z" if micro else f"{_second[1]}Z"


def _write(stream: TextIO, text: str) -> None:
    """Whole lines, at most PIPE_BUF bytes per write where they fit: the workers of one server share
    its stdout, and only a pipe write of at most PIPE_BUF bytes is atomic (POSIX), so a longer batch
    could have another worker's line land in the middle of one of ours."""
    if text.isascii():  # characters are bytes: cut at the last newline that fits, found in C
        start, end = 0, len(text)
        while end - start > _ATOMIC:
            cut = text.rfind("\n", start, start + _ATOMIC) + 1
            if not cut:  # a line longer than PIPE_BUF leaves alone, whole
                cut = text.find("\n", start) + 1 or end
            stream.write(text[start:cut])
            stream.flush()
            start = cut
        stream.write(text[start:] if start else text)
        stream.flush()
        return
    chunk: list[str] = []
    size = 0
    lines = text.split("\n")  # a JSON line escapes its own newlines
    tail = lines.pop()  # "" when the text ends with a line's "\n", as ours do
    for line in (*(line + "\n" for line in lines), *((tail,) if tail else ())):
        n = len(line.encode())
        if chunk and size + n > _ATOMIC:
            stream.write("".join(chunk))
            stream.flush()
            chunk, size = [], 0
        chunk.append(line)
        size += n
    if chunk:
        stream.write("".join(chunk))
        stream.flush()


def _flush_pending(stream: TextIO) -> None:
    if _pending:
        text = "".join(_pending)
        _pending.clear()
        _write(stream, text)


@contextmanager
def batched_lines() -> Iterator[None]:
    """Every RequestLine emitted inside, immediate ones too, leaves in one write when the block ends
    (whole lines of at most PIPE_BUF bytes per write, `_write`): for code that emits many lines at one
    point and must have them all in the stream before it goes on (the audit writer)."""
    _holding[0] += 1
    try:
        yield
    finally:
        _holding[0] -= 1
        if not _holding[0] and _pending and _fast is not None:
            _flush_pending(_fast[1])


def _flush_at_exit() -> None:
    # A loop closed with the flush still scheduled: its lines are not lost.
    if _pending and _fast is not None:
        _flush_pending(_fast[1])


_BATCH_LINES: Final = 256
_ATOMIC: Final = getattr(select, "PIPE_BUF", 512)  # POSIX guarantees at least 512
_pending: list[str] = []
_holding = [0]  # how deep inside batched_lines() we are (a list: no global statement needed)
atexit.register(_flush_at_exit)


# (the processors configure_logging installed, its stream) while that configuration renders JSON at info
# or below; None otherwise. RequestLine writes directly only while structlog still has those processors.
_fast: tuple[tuple[Any, ...], TextIO] | None = None
