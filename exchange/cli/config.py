"""`exchange config check`: run every start-up check without starting."""

from __future__ import annotations

import asyncio
import logging

import click

from exchange.cli.console import config_option, fail, json_option, settings_or_exit
from exchange.cli.output import emit_object
from exchange.config import config_path
from schemas.output import ConfigSummary


@click.group()
def config() -> None:
    """Validate configuration."""


@config.command("check")
@config_option
# Before --config existed the file was an argument; it still works, but --config is the one way.
@click.argument("legacy_file", metavar="[CONFIG_FILE]", required=False)
@click.option("--connect", is_flag=True, help="Also reach the store and fetch every jwks_uri.")
@json_option
def config_check(config_file: str | None, legacy_file: str | None, connect: bool, as_json: bool) -> None:
    """Run every start-up check without starting: the file, its policies, the KEK, every file it
    names (exit 1 listing every problem); with --connect, the store and each jwks_uri as well."""
    from exchange.preflight import connect as connect_checks

    if config_file and legacy_file and config_file != legacy_file:
        raise click.UsageError("give the config file once: --config FILE")
    path = config_path(config_file or legacy_file)
    settings = settings_or_exit(str(path), preflight=True)
    if connect:
        logging.getLogger("exchange.verify").setLevel(logging.ERROR)  # the problems say it once
        problems = asyncio.run(connect_checks(settings))
        if problems:
            fail(*problems)
    summary = ConfigSummary(
        file=str(path),
        purposes=len(settings.purposes),
        clients=len(settings.clients),
        trusted_issuers=len(settings.trusted_issuers) + (settings.dev_issuer is not None),
    )
    if as_json:
        emit_object(summary)
        return
    click.echo(
        f"{path}: ok ({summary.purposes} purposes, {summary.clients} clients, "
        f"{summary.trusted_issuers} trusted issuers)"
    )
