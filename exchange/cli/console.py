"""What every `exchange` command shares: the --config option, loading settings, one-sentence failures.

Exit codes: 0 success, 1 a handled error (one clear sentence per problem on stderr), 2 usage (click).
"""

from __future__ import annotations

import asyncio
import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import click

from exchange.config import config_path, load_settings
from exchange.errors import ConfigError
from exchange.logging import DEBUG_ENV, configure_from
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


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV) == "1"


def fail(*problems: str) -> NoReturn:
    """Exit 1 with one sentence per problem (and, under --debug, the traceback being handled)."""
    if debugging() and sys.exc_info()[0] is not None:
        traceback.print_exc()
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    sys.exit(1)


def settings_or_exit(
    config_file: str | None, *, with_policies: bool = False, preflight: bool = False
) -> Settings:
    """Load and check the config or exit 1. `with_policies` also compiles its purpose policies;
    `preflight` also runs every start-up check that needs no network (exchange/preflight.py)."""
    from exchange import preflight as checks
    from rules import PolicyError, compile_policies

    path = config_path(config_file)
    try:
        settings = load_settings(path)
        if with_policies or preflight:
            compile_policies(settings)
    except ConfigError as exc:
        fail(*exc.problems)
    except PolicyError as exc:
        fail(*(f"{path}: {problem}" for problem in exc.problems))
    if preflight:
        # What the checks log (a key dropped from a JWKS file) leaves like the server's own lines.
        configure_from(settings.logging)
        # Each names its key, file or variable: the same sentence as start-up itself would say.
        problems = checks.preflight(settings)
        if problems:
            fail(*problems)
    return settings


class Commands(click.Group):
    """The `exchange` group: an unexpected failure is one sentence too (the traceback under --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            fail(f"unexpected {type(exc).__name__}: {exc} (run `exchange --debug ...` for the traceback)")


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one command's coroutine; configuration and store trouble become exit 1, never a traceback."""
    try:
        return asyncio.run(coro_fn())
    except ConfigError as exc:
        fail(*exc.problems)
    except StoreUnavailable as exc:
        fail(f"the store is unavailable: {exc}")
