"""`exchange clients`: client credentials."""

from __future__ import annotations

import sys

import click

from exchange.cli.console import fail, json_option
from exchange.cli.output import emit_object
from schemas.output import SecretHash

MIN_SECRET = 16


@click.group()
def clients() -> None:
    """Client credentials."""


@clients.command("hash-secret")
@json_option
def clients_hash_secret(as_json: bool) -> None:
    """Hash a client secret for `secret_hash`: prompted without echo on a terminal, else read from stdin.

    The secret never goes on the command line (shell history, the process list).
    """
    from exchange.clients import hash_secret

    if sys.stdin.isatty():
        secret = click.prompt("Client secret", hide_input=True, confirmation_prompt=True, err=True)
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if len(secret) < MIN_SECRET:
        fail(f"the secret must be at least {MIN_SECRET} characters")
    digest = hash_secret(secret)
    if as_json:
        emit_object(SecretHash(secret_hash=digest))
    else:
        click.echo(digest)
