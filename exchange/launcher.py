"""The `exchange` console script: the CLI when the server extra is installed, one sentence when not.

The base install (`pip install purpose-exchange`) is the verifier and the client library; the command
line, the server, the ambassador and the gateway come with `purpose-exchange[server]`. This module is
stdlib only, so the script exists under either install and tells a base-install user what to install
instead of failing with an ImportError traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Final

#: Top-level modules of the server extra that the CLI imports (pyproject's `server` list).
SERVER_MODULES: Final = ("click", "litestar", "structlog", "granian", "asyncpg")
INSTALL_HINT: Final = "pip install 'purpose-exchange[server]'"


def missing_server_modules() -> list[str]:
    """The server extra's modules this interpreter cannot import (empty when the extra is installed)."""
    return [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]


def main() -> None:
    missing = missing_server_modules()
    if missing:
        command = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "the CLI"
        what = f"`exchange {command}`" if command != "the CLI" else "the exchange command line"
        print(
            f"error: {what} needs the server extra (missing: {', '.join(missing)}); "
            f"install it with: {INSTALL_HINT}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    from exchange.cli import main as cli

    cli()
