"""`exchange <noun> <verb>`: thin synchronous commands over the same pieces the service uses.

One module per noun; this one only assembles them. Exit codes: 0 success, 1 a handled error (one clear
sentence on stderr), 2 usage.
"""

from __future__ import annotations

import os

import click

from exchange.cli.ambassador import ambassador_command, gateway_command
from exchange.cli.audit import audit
from exchange.cli.clients import clients
from exchange.cli.config import config
from exchange.cli.console import Commands
from exchange.cli.db import db_group
from exchange.cli.dev import dev_token
from exchange.cli.keys import keys
from exchange.cli.rules import rules_group
from exchange.cli.serve import serve
from exchange.cli.verify import verify_command
from exchange.logging import DEBUG_ENV


@click.group(cls=Commands)
@click.version_option(package_name="purpose-exchange")
@click.option("--debug", is_flag=True, help="On failure, print the traceback as well as the one-line error.")
def main(debug: bool) -> None:
    """Purpose Exchange: RFC 8693 purpose-bound token exchange."""
    if debug:
        os.environ[DEBUG_ENV] = "1"
    from exchange.logging import configure_logging

    # Log lines (a migration at store open, a generated KEK) go to stderr: stdout carries only data.
    configure_logging()


for command in (
    serve,
    config,
    keys,
    clients,
    dev_token,
    audit,
    rules_group,
    db_group,
    verify_command,
    ambassador_command,
    gateway_command,
):
    main.add_command(command)
