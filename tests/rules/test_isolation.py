"""`rules/` has a store protocol of its own: importing the engine loads no server module."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_rule_engine_loads_nothing_of_the_exchange() -> None:
    code = (
        "import rules, rules.engine, rules.limits, rules.python, sys; "
        "loaded = sorted(m for m in sys.modules if m == 'exchange' or m.startswith('exchange.')); "
        "assert not loaded, loaded; "
        "assert 'asyncpg' not in sys.modules and 'litestar' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
