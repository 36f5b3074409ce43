"""`exchange.client` is for client apps: with the base install it must load only joserfc, msgspec,
httpx and cryptography (and what those need), never the server's stack."""

from __future__ import annotations

import subprocess
import sys

# In a fresh interpreter, every distribution outside the four base libraries' dependency closure is
# made unimportable (as if only the base install were there), then `exchange.client` is imported.
# httpx, for one, loads click and rich when they happen to be installed; under the base install they
# are not, and the client must work without them.
PROBE = r"""
import importlib.abc, re, sys
from importlib import metadata

def closure(names):
    seen, todo = set(), list(names)
    while todo:
        name = re.split(r"[ ;<>=!~\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo.extend(r for r in requires if "extra ==" not in r)
    return seen

BASE = closure(["joserfc", "msgspec", "httpx", "cryptography"])
OURS = {"exchange", "schemas"}
OWNERS = {
    top: {d.lower().replace("_", "-") for d in dists}
    for top, dists in metadata.packages_distributions().items()
}

def allowed(top):
    # Private top-level names are the interpreter's and site's own shims (_distutils_hack, __main__).
    if top in sys.stdlib_module_names or top in OURS or top.startswith("_"):
        return True
    return bool(OWNERS.get(top, set()) & BASE)

class BaseInstallOnly(importlib.abc.MetaPathFinder):
    refused = []
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if not allowed(top):
            self.refused.append(top)
            raise ModuleNotFoundError(f"not in the base install: {top}", name=top)
        return None

sys.meta_path.insert(0, BaseInstallOnly())
import exchange.client
from exchange.client import PurposeTokenClient, PrivateKeyJWT
foreign = sorted({m.split(".")[0] for m in sys.modules if not allowed(m.split(".")[0])})
server = sorted(
    m for m in sys.modules
    if m.startswith("exchange.") and not m.startswith(("exchange.client.", "exchange.verify."))
    and m not in ("exchange.client", "exchange.verify")
)
assert not foreign and not server, (foreign, server)
print("refused:", sorted(set(BaseInstallOnly.refused)))
"""


def test_the_client_imports_with_only_the_base_dependencies_installed() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # Not asserted as a list (it depends on what this environment has installed), but shown on failure.
    assert result.stdout.startswith("refused:")


def test_importing_the_client_loads_no_server_framework() -> None:
    code = (
        "import exchange.client, sys; "
        "bad = [m for m in ('litestar', 'asyncpg', 'structlog', 'granian') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
