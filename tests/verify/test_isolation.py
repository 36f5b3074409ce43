"""`exchange.verify` is what downstream services import: it must not drag in the server's stack."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_verifier_loads_neither_litestar_nor_asyncpg() -> None:
    code = (
        "import exchange.verify, sys; "
        "assert 'litestar' not in sys.modules and 'asyncpg' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('litestar', 'asyncpg', 'exchange'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_importing_the_verifier_loads_nothing_of_the_server() -> None:
    code = (
        "import exchange.verify, sys; "
        "server = sorted(m for m in sys.modules "
        "if m.startswith('exchange.') and not m.startswith('exchange.verify')); "
        "assert not server, server"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_importing_the_asgi_middleware_loads_neither_either() -> None:
    code = (
        "import exchange.verify.asgi, sys; "
        "assert 'litestar' not in sys.modules and 'asyncpg' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
