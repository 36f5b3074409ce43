"""What every `exchange` command shares: the --config option, loading settings, one-sentence failures.

Exit codes: 0 success, 1 a handled error (one clear sentence per problem on stderr), 2 usage (click).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import click

from exchange.config import config_path, load_settings
from exchange.errors import ConfigError
from exchange.store.base import StoreUnavailable
from schemas.config import Settings

T = TypeVar("T")

config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (default: $EXCHANGE_CONFIG, else ./exchange.toml).",
)


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON: a list as one object per line, a single result as one object (docs/OPERATIONS.md).",
)


def fail(*problems: str) -> NoReturn:
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    sys.exit(1)


def settings_or_exit(config_file: str | None, *, with_policies: bool = False) -> Settings:
    """Load and check the config (and, when asked, compile its purpose policies) or exit 1."""
    from rules import PolicyError, compile_policies

    path = config_path(config_file)
    try:
        settings = load_settings(path)
        if with_policies:
            compile_policies(settings)
    except ConfigError as exc:
        fail(*exc.problems)
    except PolicyError as exc:
        fail(*(f"{path}: {problem}" for problem in exc.problems))
    return settings


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one command's coroutine; configuration and store trouble become exit 1, never a traceback."""
    try:
        return asyncio.run(coro_fn())
    except ConfigError as exc:
        fail(*exc.problems)
    except StoreUnavailable as exc:
        fail(f"the store is unavailable: {exc}")
