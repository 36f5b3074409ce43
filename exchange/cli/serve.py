"""`exchange serve`: run the service."""

from __future__ import annotations

import os

import click

from exchange.cli.console import config_option, fail, settings_or_exit
from exchange.config import config_path
from exchange.errors import ConfigError


@click.command()
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="TCP port to listen on.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes (each with its own store pool and audit writer).",
)
def serve(config_file: str | None, host: str, port: int, workers: int) -> None:
    """Run the service (granian, ASGI)."""
    from granian import Granian
    from granian.constants import Interfaces

    from exchange import devidp
    from exchange.keys import load_kek

    path = config_path(config_file)
    settings = settings_or_exit(str(path), with_policies=True)
    # Here, once, before any worker: a KEK file others could read stops start-up with one sentence
    # (not a worker's traceback), and generated files are not raced for by several workers.
    try:
        load_kek(settings.signing, settings.store)
    except ConfigError as exc:
        fail(*exc.problems)
    if settings.dev_issuer is not None:
        devidp.load_or_create_key(settings.dev_issuer.key_file)
    # Workers are separate processes: they find the config through the environment.
    os.environ["EXCHANGE_CONFIG"] = str(path.resolve())
    Granian(
        "exchange.app:app_from_env",
        factory=True,
        interface=Interfaces.ASGI,
        address=host,
        port=port,
        workers=workers,
        log_access=False,
    ).serve()
