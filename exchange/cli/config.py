"""`exchange config check`: validate a config file without starting."""

from __future__ import annotations

import click

from exchange.cli.console import settings_or_exit
from exchange.config import config_path


@click.group()
def config() -> None:
    """Validate configuration."""


@config.command("check")
@click.argument("config_file", required=False)
def config_check(config_file: str | None) -> None:
    """Validate a config file without starting (exit 1 listing every problem)."""
    path = config_path(config_file)
    settings = settings_or_exit(str(path), with_policies=True)
    click.echo(
        f"{path}: ok ({len(settings.purposes)} purposes, {len(settings.clients)} clients, "
        f"{len(settings.trusted_issuers) + (settings.dev_issuer is not None)} trusted issuers)"
    )
