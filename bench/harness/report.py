"""Results as Markdown: tables, the exact command, the setting. Scenarios print; nothing is written
to RESULTS.md by itself (figures there are chosen, with their commands, by whoever measured them)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence


def command() -> str:
    """This run's command line, as a user would type it from the repository root."""
    return shlex.join([".venv/bin/python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def machine() -> str:
    load = os.getloadavg()
    return (
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average {load[0]:.2f} at the start"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A Markdown table; `align` is one letter per column, l or r (default: first l, rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rate(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f}/s"


def ms(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f} ms"


def us(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1e6:.1f} µs"


def ratio(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}x"


def header(title: str, *notes: str) -> str:
    """The block every result starts with: title, date, exact command, setting."""
    lines = [f"### {title} ({stamp()})", "", f"`{command()}`", "", machine() + "."]
    lines += [n for n in notes if n]
    return "\n".join(lines) + "\n"
