"""`exchange keys`: list and rotate signing keys."""

from __future__ import annotations

import time
from typing import Any

import click
import msgspec

from exchange.cli.console import config_option, run, settings_or_exit
from schemas.config import Settings


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
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
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
        click.echo(
            msgspec.json.encode(
                [
                    {
                        "kid": k.kid,
                        "alg": k.alg,
                        "state": k.state,
                        "created_at": k.created_at,
                        "retired_at": k.retired_at,
                    }
                    for k in rows
                ]
            ).decode()
        )
        return
    click.echo(f"{'KID':<45} {'ALG':<8} {'STATE':<9} CREATED")
    for k in rows:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(k.created_at))
        click.echo(f"{k.kid:<45} {k.alg:<8} {k.state:<9} {created}")


@keys.command("rotate")
@config_option
def keys_rotate(config_file: str | None) -> None:
    """Make a new active key; the old one stays published until its tokens have expired."""
    settings = settings_or_exit(config_file)

    async def go() -> str:
        store, ring = await _keyring(settings)
        try:
            return str(await ring.rotate())
        finally:
            await store.close()

    kid = run(go)
    click.echo(f"rotated: new active key {kid}")
