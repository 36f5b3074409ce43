"""How every `exchange` command prints: the one JSON convention, aligned tables, UTC times.

The JSON convention (docs/OPERATIONS.md, "CLI conventions"), for every command's `--json`:
- a list is JSON Lines: one compact object per line, nothing else on stdout (`emit_lines`);
- a single result is one compact object on one line (`emit_object`);
- field names are the stored names (`request_id`, `client_id`, `created_at`, ...), the same in every
  command; every field is present, `null` when it has no value;
- times are UTC RFC 3339 strings with microseconds and `Z` (`2026-11-29T10:16:50.123456Z`);
- notes for humans ("more rows: use ...") go to stderr, so stdout stays parseable.

Tables are for people: columns aligned to their content, a value too wide for its column is cut with
a visible `…`, never silently; control characters in stored text are shown escaped, never sent to the
terminal (a request-supplied value could otherwise move the cursor or rewrite the screen), in tables
as Python escapes and in JSON as `\\uXXXX` escapes (`exchange/text.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import click
import msgspec

from exchange.text import json_printable, printable

_encoder = msgspec.json.Encoder()
CUT = "…"


def utc(timestamp: float | None) -> str | None:
    """Epoch seconds as the JSON convention's time: `2026-11-29T10:16:50.123456Z`."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_seconds(timestamp: float | None) -> str:
    """Epoch seconds for a table cell: `2026-11-29T10:16:50Z` (`-` when absent)."""
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(value: Any) -> str:
    # Same values for a program; no raw C1 control or bidi override for a terminal (exchange/text.py).
    return json_printable(_encoder.encode(value).decode())


def emit_object(value: Any) -> None:
    """A single result: one compact JSON object on one line."""
    click.echo(_json(value))


def emit_lines(values: Iterable[Any]) -> None:
    """A list: JSON Lines, one compact object per line, written as they come (streams stay streams)."""
    for value in values:
        click.echo(_json(value))


def note(message: str) -> None:
    """A remark for the person at the terminal, on stderr (stdout carries only data)."""
    click.echo(message, err=True)


def cell(value: object, width: int | None = None) -> str:
    """One table cell: `-` for nothing, escaped, and cut with a visible mark past `width`."""
    text = "-" if value is None or value == "" else printable(str(value))
    if width is not None and len(text) > width:
        return text[: width - 1] + CUT
    return text


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, widths: Sequence[int | None]) -> None:
    """An aligned table; `widths` caps each column (None: as wide as its widest value; the last
    column is never padded)."""
    cells = [[cell(v, w) for v, w in zip(row, widths, strict=True)] for row in rows]
    sizes = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for line in [list(headers), *cells]:
        padded = [text.ljust(size) for text, size in zip(line[:-1], sizes, strict=False)]
        click.echo(" ".join([*padded, line[-1]]).rstrip())
