"""`exchange clients`: client credentials."""

from __future__ import annotations

import sys

import click

from exchange.cli.console import fail


@click.group()
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
