"""`pip install purpose-exchange` (no extra) is what a downstream service needs, and nothing more.

A fresh venv gets the base install of this checkout from the package index as a user would; it must
hold joserfc, msgspec, httpx, cryptography (and what they need), none of the server's stack, verify a
real token against a JWKS served over HTTP, import the client library, and have an `exchange` command
that says in one sentence what to install for the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from joserfc.jwk import Key

from tests.verify.conftest import AUDIENCE, ISSUER, JWKSServer, base_claims, mint

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = {"litestar", "structlog", "asyncpg", "granian", "click"}


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    where = tmp_path_factory.mktemp("base-install") / "venv"
    venv.create(where, with_pip=True)
    python = where / "bin" / "python"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    yield where


def installed(where: Path) -> set[str]:
    result = subprocess.run(
        [str(where / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return {row["name"].lower().replace("_", "-") for row in json.loads(result.stdout)}


def test_the_base_install_brings_the_verifier_libraries_and_nothing_of_the_server(base_venv: Path) -> None:
    names = installed(base_venv)
    assert {"purpose-exchange", "joserfc", "msgspec", "httpx", "cryptography"} <= names
    assert not names & SERVER_ONLY, sorted(names & SERVER_ONLY)


def test_a_token_verifies_under_the_base_install(
    base_venv: Path, jwks_server: JWKSServer, ec_key: Key
) -> None:
    jwks_server.publish(ec_key)
    token = mint(ec_key, base_claims(exp=2_000_000_000, iat=2_000_000_000 - 60))
    script = f"""
import asyncio, sys
from exchange.verify import PurposeTokenVerifier
import exchange.client
verifier = PurposeTokenVerifier(issuer={ISSUER!r}, audience={AUDIENCE!r}, jwks_uri={jwks_server.url!r})
claims = asyncio.run(verifier.averify({token!r}, purpose="payments.approve", now=2_000_000_000 - 30))
print(claims.sub)
"""
    result = subprocess.run(
        [str(base_venv / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout.strip()) == (0, "alice"), result.stderr


def test_exchange_serve_without_the_server_extra_says_what_to_install(base_venv: Path) -> None:
    result = subprocess.run(
        [str(base_venv / "bin" / "exchange"), "serve"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "`exchange serve` needs the server extra" in lines[0]
    assert "pip install 'purpose-exchange[server]'" in lines[0]


def test_the_launcher_runs_the_cli_when_the_extra_is_there() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv=['exchange','--help']; "
         "from exchange.launcher import main; main()"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0 and "serve" in result.stdout, result.stderr
