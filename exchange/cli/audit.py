"""`exchange audit`: read the audit trail."""

from __future__ import annotations

import time
from typing import Any

import click
import msgspec

from exchange.cli.console import config_option, run, settings_or_exit


@click.group()
def audit() -> None:
    """Read the audit trail."""


@audit.command("list")
@config_option
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
def audit_list(config_file: str | None, limit: int, as_json: bool) -> None:
    """Show the newest audit records."""
    settings = settings_or_exit(config_file)

    async def go() -> list[Any]:
        from exchange.store import open_store

        store = await open_store(settings.store)
        try:
            return await store.list_audit(limit=limit)
        finally:
            await store.close()

    records = run(go)
    if as_json:
        for r in records:
            click.echo(msgspec.json.encode(r).decode())
        return
    click.echo(f"{'TIME':<20} {'DECISION':<8} {'CLIENT':<14} {'PURPOSE':<22} {'SUB':<14} DETAIL")
    for r in records:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r.time))
        detail = r.jti if r.decision == "granted" else (r.denial or r.reason or r.error or "")
        click.echo(
            f"{when:<20} {r.decision:<8} {r.client_id or '-':<14.14} {r.purpose or '-':<22.22} "
            f"{r.sub or '-':<14.14} {detail}"
        )
