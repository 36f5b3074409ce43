"""`exchange rules`: inspect purpose policies."""

from __future__ import annotations

import sys
from typing import Any

import click
import msgspec

from exchange.cli.console import config_option, fail, run, settings_or_exit


@click.group("rules")
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
