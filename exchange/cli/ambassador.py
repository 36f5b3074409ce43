"""`exchange ambassador`: run a verifying reverse proxy in front of one service."""

from __future__ import annotations

import click

from exchange.ambassador import AmbassadorConfig, run
from exchange.listen import PortInUse


@click.command("ambassador")
@click.option("--listen", default="127.0.0.1:8081", show_default=True, help="host:port to serve on.")
@click.option(
    "--upstream", required=True, help="Base URL of the protected service, e.g. http://127.0.0.1:8000."
)
@click.option("--issuer", required=True, help="The exchange's issuer URL.")
@click.option("--audience", required=True, help="The protected service's audience.")
@click.option("--jwks-uri", default=None, help="JWKS URL (default: {issuer}/.well-known/jwks.json).")
@click.option(
    "--jwks-file", type=click.Path(dir_okay=False, exists=True), default=None, help="JWKS JSON file."
)
@click.option("--routes", "routes_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="TOML route table (method + path prefix -> purpose or open).")  # fmt: skip
@click.option("--purpose", default=None, help="Without --routes: the purpose every request needs.")
@click.option("--connect-timeout", default=2.0, show_default=True, type=click.FloatRange(0.01, 60),
              help="Upstream connect timeout, seconds.")  # fmt: skip
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0.01, 600),
              help="Upstream read/write timeout, seconds.")  # fmt: skip
@click.option(
    "--max-connections", default=32, show_default=True, type=click.IntRange(1, 1000),
    help="Upstream connection pool size; more requests in flight queue for a connection.",
)  # fmt: skip
@click.option("--insecure-jwks-http", is_flag=True, help="Allow plain http to a non-loopback JWKS host.")
@click.option("--server", type=click.Choice(["granian", "uvicorn"]), default="granian", show_default=True,
              help="ASGI server to run the proxy in.")  # fmt: skip
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes.")  # fmt: skip
def ambassador_command(
    listen: str,
    upstream: str,
    issuer: str,
    audience: str,
    jwks_uri: str | None,
    jwks_file: str | None,
    routes_file: str | None,
    purpose: str | None,
    connect_timeout: float,
    timeout: float,
    max_connections: int,
    insecure_jwks_http: bool,
    server: str,
    workers: int,
) -> None:
    """Run a verifying reverse proxy in front of one service."""
    if jwks_uri and jwks_file:
        raise click.UsageError("use --jwks-uri or --jwks-file, not both")
    if routes_file and purpose:
        raise click.UsageError("use --routes or --purpose, not both")
    config = AmbassadorConfig(
        upstream=upstream, issuer=issuer, audience=audience, jwks_uri=jwks_uri, jwks_file=jwks_file,
        routes_file=routes_file, purpose=purpose, connect_timeout=connect_timeout, timeout=timeout,
        max_connections=max_connections, allow_insecure_http=insecure_jwks_http,
    )  # fmt: skip
    try:
        run(config, listen=listen, server=server, workers=workers)
    except (ValueError, PortInUse) as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    ambassador_command()
