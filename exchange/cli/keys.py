"""`exchange keys`: list and rotate signing keys."""

from __future__ import annotations

from typing import Any

import click

from exchange.cli.console import config_option, json_option, run, settings_or_exit
from exchange.cli.output import emit_lines, emit_object, table, utc, utc_seconds
from schemas.config import Settings
from schemas.output import KeyLine, RotatedKey


@click.group()
def keys() -> None:
    """Signing keys."""


async def _keyring(settings: Settings) -> Any:
    from exchange.keys import KeyRing, load_kek
    from exchange.store import open_store

    kek = load_kek(settings.signing, settings.store)
    store = await open_store(settings.store)
    return store, KeyRing(store, kek, settings.signing.algorithm)


@keys.command("list")
@config_option
@json_option
def keys_list(config_file: str | None, as_json: bool) -> None:
    """List signing keys and their state (active signs; active and retiring are published)."""
    settings = settings_or_exit(config_file)

    async def go() -> list[Any]:
        from exchange.store import open_store

        store = await open_store(settings.store)
        try:
            return await store.list_keys()
        finally:
            await store.close()

    rows = run(go)
    if as_json:
        emit_lines(
            KeyLine(
                kid=k.kid,
                alg=k.alg,
                state=k.state,
                created_at=utc(k.created_at) or "",
                retired_at=utc(k.retired_at),
            )
            for k in rows
        )
        return
    table(
        ["KID", "ALG", "STATE", "CREATED", "STOPPED SIGNING"],
        ([k.kid, k.alg, k.state, utc_seconds(k.created_at), utc_seconds(k.retired_at)] for k in rows),
        widths=[None, None, None, None, None],
    )


@keys.command("rotate")
@config_option
@json_option
def keys_rotate(config_file: str | None, as_json: bool) -> None:
    """Make a new active key; the old one stays published until its tokens have expired."""
    settings = settings_or_exit(config_file)

    async def go() -> str:
        store, ring = await _keyring(settings)
        try:
            return str(await ring.rotate())
        finally:
            await store.close()

    kid = run(go)
    if as_json:
        emit_object(RotatedKey(kid=kid, state="active"))
    else:
        click.echo(f"rotated: new active key {kid}")
