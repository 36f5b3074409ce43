"""`exchange <noun> <verb>`: thin synchronous commands over the same pieces the service uses.

Exit codes: 0 success, 1 a handled error (one clear sentence on stderr), 2 usage.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click
import msgspec

from exchange.ambassador import ambassador_command
from exchange.config import config_path
from exchange.console import config_option, fail, run, settings_or_exit
from exchange.store.cli import db_group
from exchange.verify.cli import verify_command
from schemas.config import Settings


@click.group()
@click.version_option(package_name="purpose-exchange")
def main() -> None:
    """Purpose Exchange: RFC 8693 purpose-bound token exchange."""


@main.command()
@config_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
def serve(config_file: str | None, host: str, port: int, workers: int) -> None:
    """Run the service (granian, ASGI)."""
    from granian import Granian
    from granian.constants import Interfaces

    path = config_path(config_file)
    settings_or_exit(str(path), with_policies=True)
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


main.add_command(db_group)
main.add_command(verify_command, "verify")
main.add_command(ambassador_command, "ambassador")


@main.group()
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


@main.group()
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


@main.group()
def clients() -> None:
    """Client credentials."""


@clients.command("hash-secret")
def clients_hash_secret() -> None:
    """Read a client secret on stdin; print the hash to put in `secret_hash`."""
    from exchange.clients import hash_secret

    secret = sys.stdin.readline().rstrip("\r\n")
    if len(secret) < 16:
        fail("the secret must be at least 16 characters (read from stdin)")
    click.echo(hash_secret(secret))


@main.command("dev-token")
@config_option
@click.option("--sub", required=True, help="Subject (user id).")
@click.option("--amr", multiple=True, help="Authentication method (repeatable), e.g. pwd, mfa.")
@click.option("--acr", default=None)
@click.option("--claim", "claims", multiple=True, help="Extra claim as NAME=JSON_OR_TEXT (repeatable).")
@click.option("--ttl", default=600, show_default=True, type=click.IntRange(1, 86400))
@click.option("--access-token", is_flag=True, help="Mint an RFC 9068 access token (typ at+jwt).")
def dev_token(
    config_file: str | None,
    sub: str,
    amr: tuple[str, ...],
    acr: str | None,
    claims: tuple[str, ...],
    ttl: int,
    access_token: bool,
) -> None:
    """Mint an identity token from the local dev issuer (development only)."""
    from exchange import devidp

    settings = settings_or_exit(config_file)
    if settings.dev_issuer is None:
        fail("[dev_issuer] is not configured in this config file")
    extra: dict[str, Any] = {}
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


@main.group()
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


@main.group("rules")
def rules_group() -> None:
    """Inspect purpose policies."""


@rules_group.command("explain")
@config_option
@click.argument("purpose")
@click.option(
    "--claims",
    "claims_file",
    type=click.File("rb"),
    required=True,
    help="JSON file of subject claims to try (- for stdin). Not a token: nothing is verified.",
)
@click.option(
    "--details",
    "details_file",
    type=click.File("rb"),
    default=None,
    help="JSON file of authorization_details to try.",
)
@click.option("--client", "client_id", default="-", show_default=True, help="client_id to evaluate as.")
def rules_explain(
    config_file: str | None, purpose: str, claims_file: Any, details_file: Any, client_id: str
) -> None:
    """Dry-run a purpose's rules against given claims: what each rule demands and answers.

    Nothing is counted (rate limits) and nothing is issued; python rules do run, read-only.
    """
    from rules import DenialError, RuleContext, compile_policies

    settings = settings_or_exit(config_file, with_policies=True)
    policy = compile_policies(settings).get(purpose)
    if policy is None:
        fail(f"unknown purpose {purpose!r}; known: {', '.join(sorted(settings.purposes))}")
    try:
        claims = msgspec.json.decode(claims_file.read())
        details = policy.validate_details(details_file.read().decode() if details_file else None)
    except msgspec.DecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None
    except DenialError as exc:
        click.echo(f"authorization_details refused: {exc.denial.code}: {exc.denial.description}")
        sys.exit(1)

    async def go() -> Any:
        from exchange.store import open_store

        store = await open_store(settings.store)
        try:
            ctx = RuleContext(
                subject=claims,
                issuer=str(claims.get("iss", "-")),
                client_id=client_id,
                purpose=purpose,
                audience=policy.audiences[0],
                details=details,
                store=store,
            )
            return await policy.explain(ctx)
        finally:
            await store.close()

    decision, reports = run(go)
    width = max((len(r.label) for r in reports), default=4)
    for r in reports:
        code = f" ({r.code})" if r.code else ""
        click.echo(f"{r.label:<{width}}  {r.outcome:<13} {r.requirement}{code}")
    click.echo("decision: " + ("allow" if decision.allowed else f"deny: {decision.denial.code}"))
    sys.exit(0 if decision.allowed else 1)
