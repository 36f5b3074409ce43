"""`exchange dev-token`: identity tokens from the local dev issuer (development only)."""

from __future__ import annotations

from typing import Any

import click
import msgspec

from exchange.cli.console import config_option, fail, settings_or_exit


@click.command("dev-token")
@config_option
@click.option("--sub", required=True, help="Subject (user id).")
@click.option("--amr", multiple=True, help="Authentication method (repeatable), e.g. pwd, mfa.")
@click.option("--acr", default=None, help="Authentication context class (`acr` claim).")
@click.option("--claim", "claims", multiple=True, help="Extra claim as NAME=JSON_OR_TEXT (repeatable).")
@click.option(
    "--ttl",
    default=600,
    show_default=True,
    type=click.IntRange(1, 86400),
    help="Lifetime of the token, seconds.",
)
@click.option("--access-token", is_flag=True, help="Mint an RFC 9068 access token (typ at+jwt).")
@click.option(
    "--client",
    default=None,
    help="The client the token is issued to (azp; client_id for --access-token); "
    "default: the config's first client. Only that client may exchange it.",
)
def dev_token(
    config_file: str | None,
    sub: str,
    amr: tuple[str, ...],
    acr: str | None,
    claims: tuple[str, ...],
    ttl: int,
    access_token: bool,
    client: str | None,
) -> None:
    """Mint an identity token from the local dev issuer (development only)."""
    from exchange import devidp

    settings = settings_or_exit(config_file)
    if settings.dev_issuer is None:
        fail("[dev_issuer] is not configured in this config file")
    if client is None and settings.clients:
        client = settings.clients[0].client_id
    # Issued to one client, as a real provider's token is: a client may only present tokens issued to
    # it (or to parties it is configured for), so the walkthrough's client can exchange this one.
    extra: dict[str, Any] = {} if client is None else {"client_id" if access_token else "azp": client}
    for item in claims:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--claim")
        try:
            extra[name] = msgspec.json.decode(value)
        except msgspec.DecodeError:
            extra[name] = value
    click.echo(
        devidp.mint(
            settings.dev_issuer,
            sub=sub,
            ttl=ttl,
            amr=list(amr) or None,
            acr=acr,
            extra=extra,
            access_token=access_token,
        )
    )
