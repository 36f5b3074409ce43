"""`exchange verify TOKEN`: check a purpose token the way a downstream service would.

Prints the verified claims as JSON (wire names) on stdout, or one sentence with the reason code on
stderr and exits 1. The token comes on stdin (`-`): on the command line every local user could read it
in the process list, and the shell would keep it in its history, so a token given there is refused.
"""

from __future__ import annotations

import asyncio
import sys

import click
import msgspec

from exchange.verify.errors import VerificationError
from exchange.verify.jwks import key_source
from exchange.verify.verifier import PurposeTokenVerifier
from schemas.algorithms import ASYMMETRIC_ALGORITHMS, DEFAULT_ALGORITHMS


def token_on_argv() -> str:
    """A token on the command line: refused (exit 2), it is a credential every local user could read."""
    raise click.UsageError(
        "pass the token on stdin (`-`): on the command line every local user can read it in the process"
        " list, and the shell keeps it in its history"
    )


@click.command("verify")
@click.argument("token")
@click.option("--issuer", required=True, help="The exchange's issuer URL (exact match with iss).")
@click.option("--audience", required=True, help="This service's audience (exact match with aud).")
@click.option("--jwks-uri", default=None, help="JWKS URL (default: {issuer}/.well-known/jwks.json).")
@click.option(
    "--jwks-file", type=click.Path(dir_okay=False, exists=True), default=None, help="JWKS JSON file."
)
@click.option("--purpose", default=None, help="Require this purpose (the token's scope).")
@click.option(
    "--algorithm", "algorithms", multiple=True, type=click.Choice(sorted(ASYMMETRIC_ALGORITHMS)),
    help="Allowed algorithm (repeatable; default: ES256, Ed25519, EdDSA, RS256, PS256).",
)  # fmt: skip
@click.option(
    "--leeway", default=10, show_default=True, type=click.IntRange(0, 120), help="Clock skew, seconds."
)
def verify_command(
    token: str,
    issuer: str,
    audience: str,
    jwks_uri: str | None,
    jwks_file: str | None,
    purpose: str | None,
    algorithms: tuple[str, ...],
    leeway: int,
) -> None:
    """Verify the token on stdin (TOKEN is `-`) and print its claims as JSON."""
    if jwks_uri and jwks_file:
        raise click.UsageError("use --jwks-uri or --jwks-file, not both")
    token = sys.stdin.read().strip() if token == "-" else token_on_argv()
    try:
        keys = key_source(jwks_file=jwks_file, jwks_uri=jwks_uri, issuer=issuer)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    verifier = PurposeTokenVerifier(
        issuer=issuer,
        audience=audience,
        jwks=keys,
        algorithms=algorithms or DEFAULT_ALGORITHMS,
        leeway=leeway,
    )
    try:
        claims = asyncio.run(verifier.averify(token, purpose=purpose))
    except VerificationError as exc:
        fetch_error = getattr(keys, "last_error", None)
        suffix = f" (JWKS fetch failed: {fetch_error})" if exc.reason == "unknown_key" and fetch_error else ""
        click.echo(f"rejected: {exc.reason}: {exc.detail or 'no detail'}{suffix}", err=True)
        sys.exit(1)
    click.echo(msgspec.json.format(msgspec.json.encode(claims.to_dict()), indent=2).decode())
