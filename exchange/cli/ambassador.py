"""`exchange ambassador` and `exchange gateway`: verifying placements in front of services.

Both take the same verifier options (whose tokens, which keys, which routes, where single-use jtis are
remembered); one decorator declares them once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final, TypeVar

import click

from exchange.ambassador import AmbassadorConfig, run
from exchange.gateway import PROXIES, GatewayConfig
from exchange.gateway import run as run_gateway
from exchange.listen import PortInUse

F = TypeVar("F", bound=Callable[..., Any])
#: The replay database's DSN may hold a password: it comes from the environment, never argv.
REPLAY_DSN_ENV: Final = "PURPOSE_REPLAY_DSN"


def placement_options(function: F) -> F:
    """The options every placement shares, applied in order."""
    options = [
        click.option("--issuer", required=True, help="The exchange's issuer URL."),
        click.option("--audience", default=None, help="The protected service's audience (purpose tokens)."),
        click.option("--jwks-uri", default=None, help="JWKS URL (default: {issuer}/.well-known/jwks.json)."),
        click.option(
            "--jwks-file", type=click.Path(dir_okay=False, exists=True), default=None, help="JWKS JSON file."
        ),
        click.option(
            "--routes",
            "routes_file",
            type=click.Path(dir_okay=False, exists=True),
            default=None,
            help="TOML route table (method + path prefix -> purpose or open).",
        ),
        click.option("--purpose", default=None, help="Without --routes: the purpose every request needs."),
        click.option(
            "--insecure-jwks-http", is_flag=True, help="Allow plain http to a non-loopback JWKS host."
        ),
        click.option(
            "--txn-trust-domain",
            default=None,
            help="Also require a Txn-Token of this trust domain (Txn-Token header).",
        ),
        click.option(
            "--txn-routes",
            "txn_routes_file",
            type=click.Path(dir_okay=False, exists=True),
            default=None,
            help="TOML route table for Txn-Tokens (a route's purpose is the Txn-Token scope).",
        ),
        click.option(
            "--txn-scope", default=None, help="Without --txn-routes: the Txn-Token scope every request needs."
        ),
        click.option(
            "--replay-file",
            type=click.Path(dir_okay=False),
            default=None,
            help=f"SQLite file remembering single-use jtis for every worker on this host "
            f"(PostgreSQL for replicas: set ${REPLAY_DSN_ENV}). Default with --workers > 1: "
            "a private temporary file.",
        ),
        click.option(
            "--server",
            type=click.Choice(["granian", "uvicorn"]),
            default="granian",
            show_default=True,
            help="The ASGI server to run on.",
        ),
        click.option(
            "--workers",
            default=1,
            show_default=True,
            type=click.IntRange(1, 64),
            help="Worker processes (they share single-use jtis through the replay file).",
        ),
        click.option(
            "--header-timeout",
            default=10.0,
            show_default=True,
            type=click.FloatRange(1, 300),
            help="Seconds a connection has to send its request head (and an idle keep-alive one stays open).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _common(options: dict[str, Any]) -> dict[str, Any]:
    if options["jwks_uri"] and options["jwks_file"]:
        raise click.UsageError("use --jwks-uri or --jwks-file, not both")
    if options["routes_file"] and options["purpose"]:
        raise click.UsageError("use --routes or --purpose, not both")
    if options["audience"] is None and options["txn_trust_domain"] is None:
        raise click.UsageError("give --audience (purpose tokens), --txn-trust-domain (Txn-Tokens) or both")
    if (options["txn_routes_file"] or options["txn_scope"]) and options["txn_trust_domain"] is None:
        raise click.UsageError("--txn-routes and --txn-scope need --txn-trust-domain")
    if options["txn_routes_file"] and options["txn_scope"]:
        raise click.UsageError("use --txn-routes or --txn-scope, not both")
    return {
        "issuer": options["issuer"], "audience": options["audience"], "jwks_uri": options["jwks_uri"],
        "jwks_file": options["jwks_file"], "routes_file": options["routes_file"],
        "purpose": options["purpose"],
        "allow_insecure_http": options["insecure_jwks_http"], "replay_file": options["replay_file"],
        "replay_dsn": os.environ.get(REPLAY_DSN_ENV) or None,
        "txn_trust_domain": options["txn_trust_domain"], "txn_routes_file": options["txn_routes_file"],
        "txn_scope": options["txn_scope"], "header_timeout": options["header_timeout"],
    }  # fmt: skip


def _serve(runner: Callable[..., None], config: Any, listen: str, server: str, workers: int) -> None:
    try:
        runner(config, listen=listen, server=server, workers=workers)
    except (ValueError, PortInUse) as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None


@click.command("ambassador")
@click.option("--listen", default="127.0.0.1:8081", show_default=True, help="host:port to serve on.")
@click.option(
    "--upstream", required=True, help="Base URL of the protected service, e.g. http://127.0.0.1:8000."
)
@placement_options
@click.option("--connect-timeout", default=2.0, show_default=True, type=click.FloatRange(0.01, 60),
              help="Seconds to connect to the upstream.")  # fmt: skip
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0.01, 600),
              help="Upstream read/write timeout, seconds.")  # fmt: skip
@click.option("--body-timeout", default=30.0, show_default=True, type=click.FloatRange(0.01, 3600),
              help="The whole request body must arrive within this many seconds.")  # fmt: skip
@click.option(
    "--max-connections", default=32, show_default=True, type=click.IntRange(1, 1000),
    help="Upstream connection pool size; more requests in flight queue for a connection.",
)  # fmt: skip
@click.option(
    "--trusted-proxy", "trusted_proxies", multiple=True,
    help="CIDR of an outer proxy whose Forwarded/X-Forwarded-* headers are kept (repeatable).",
)  # fmt: skip
def ambassador_command(listen: str, upstream: str, server: str, workers: int, **options: Any) -> None:
    """Run a verifying reverse proxy in front of one service."""
    config = AmbassadorConfig(
        upstream=upstream, connect_timeout=options["connect_timeout"], timeout=options["timeout"],
        body_timeout=options["body_timeout"], max_connections=options["max_connections"],
        trusted_proxies=tuple(options["trusted_proxies"]), **_common(options),
    )  # fmt: skip
    _serve(run, config, listen, server, workers)


@click.command("gateway")
@click.option("--listen", default="127.0.0.1:8082", show_default=True, help="host:port to serve on.")
@click.option("--proxy", type=click.Choice(PROXIES), default="nginx", show_default=True,
              help="Which proxy asks: where the original method and URI are read from.")  # fmt: skip
@click.option("--envoy-prefix", default="/check", show_default=True,
              help="With --proxy envoy: the ext_authz http_service path_prefix.")  # fmt: skip
@placement_options
def gateway_command(
    listen: str, proxy: str, envoy_prefix: str, server: str, workers: int, **options: Any
) -> None:
    """Answer forward-auth checks (nginx auth_request, Traefik, Envoy ext_authz, Caddy)."""
    config = GatewayConfig(proxy=proxy, envoy_prefix=envoy_prefix, **_common(options))  # type: ignore[arg-type]
    _serve(run_gateway, config, listen, server, workers)


if __name__ == "__main__":
    ambassador_command()
