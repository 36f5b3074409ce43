"""`exchange serve`: run the service (granian, ASGI)."""

from __future__ import annotations

import os

import click

from exchange.cli.console import config_option, fail, settings_or_exit
from exchange.config import config_path, is_loopback_host
from exchange.errors import ConfigError


@click.command()
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="TCP port to listen on."
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes (each with its own store pool and audit writer).",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where workers share metrics and reload state (default: a private folder named after the "
    "config file and port, which `exchange config reload` finds).",
)
def serve(config_file: str | None, host: str, port: int, workers: int, run_dir: str | None) -> None:
    """Run the service (granian, ASGI)."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    from exchange import devidp
    from exchange.connections import raise_file_limit, server_options
    from exchange.keys import load_kek
    from exchange.listen import PortInUse, ensure_free, split_host_port
    from exchange.logging import FORMAT_ENV, granian_log_config, wants_json
    from exchange.reload import forward_reload
    from exchange.rundir import RUN_DIR_ENV, RunDir, RunDirError, default_run_dir

    path = config_path(config_file)
    settings = settings_or_exit(str(path), preflight=True)
    # Preflight checked the KEK (a file others could read is refused there too); loading it here, once,
    # before any worker, also generates the KEK file and the dev key, so workers never race for them.
    try:
        load_kek(settings.signing, settings.store)
    except ConfigError as exc:
        fail(*exc.problems)
    if settings.dev_issuer is not None:
        if not is_loopback_host(host):
            # Its sign-in pages sign anyone in as anyone: reachable from another machine, they would be
            # a way in for everyone who can reach the port.
            fail(
                "[dev_issuer] is for development on this machine only:"
                f" serve it on a loopback address, not {host}"
            )
        devidp.load_or_create_key(settings.dev_issuer.key_file)
    management = settings.metrics.listen if settings.metrics.enabled else None
    try:
        ensure_free(host, port, what="--port")
        if management is not None:
            ensure_free(*split_host_port(management), what="metrics.listen")
    except PortInUse as exc:
        fail(str(exc))
    folder = RunDir(run_dir or default_run_dir(path, port))
    try:
        folder.create(os.getpid())
    except (RunDirError, OSError) as exc:
        fail(f"run directory: {exc}")
    # Workers are separate processes: they find the config, the run dir and the log format through
    # the environment, so every process of this server writes the same format.
    os.environ["EXCHANGE_CONFIG"] = str(path.resolve())
    os.environ[RUN_DIR_ENV] = str(folder.path)
    os.environ[FORMAT_ENV] = "json" if wants_json(settings.logging.format) else "console"
    max_connections, warning = raise_file_limit(settings.limits, workers)
    if warning is not None:
        click.echo(f"warning: {warning}", err=True)
    listener = None
    if management is not None:
        from exchange.management import serve_metrics

        listener = serve_metrics(*split_host_port(management), folder)
    try:
        server = Granian(
            "exchange.app:app_from_env",
            factory=True,
            interface=Interfaces.ASGI,
            address=host,
            port=port,
            workers=workers,
            log_level=LogLevels(settings.logging.level),
            log_access=settings.logging.access_log,
            log_dictconfig=granian_log_config(settings.logging.level),
            **server_options(settings.limits, max_connections),
        )
        # granian's own SIGHUP respawns every worker: a new config that fails would take the server
        # down, and in-flight requests and warm caches would go with the old workers. Ours: each
        # worker validates the file and swaps its configuration in place (exchange/reload.py).
        server.signal_handler_reload = lambda *_: forward_reload(folder)  # type: ignore[method-assign]
        server.serve()
    finally:
        if listener is not None:
            listener.shutdown()
        folder.remove()
