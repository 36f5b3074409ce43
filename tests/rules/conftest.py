"""Fixtures for the rule engine: settings from TOML snippets, compiled policies, contexts, a real store."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from exchange.store import Store, open_store
from exchange.store.sqlite import SQLiteStore
from rules import PurposePolicy, RuleContext, compile_policies
from schemas.config import Settings, StoreConfig

IDP = "https://idp.example.com"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "rules"
# 2026-11-27 is a Friday; 14:30 in Paris (UTC+1 in November) is 13:30 UTC.
FRIDAY_1430_PARIS = 1795786200.0

_HEAD = f"""
issuer = "http://127.0.0.1:8080"

[[trusted_issuers]]
issuer = "{IDP}"
jwks_file = "idp-jwks.json"
audiences = ["purpose-exchange"]

[[clients]]
client_id = "bank-web"
purposes = ["p"]

[[clients]]
client_id = "svc-batch"
purposes = ["p"]
"""


def settings(purpose_toml: str, *, head: str = _HEAD) -> Settings:
    """Settings whose only purpose "p" is `[purposes."p"]` followed by `purpose_toml`."""
    return msgspec.toml.decode(
        f'{head}\n[purposes."p"]\naudience = "https://payments.internal"\n{purpose_toml}', type=Settings
    )


def policy(purpose_toml: str) -> PurposePolicy:
    """The compiled policy of purpose "p"."""
    return compile_policies(settings(purpose_toml))["p"]


def rules_policy(*rules: str, extra: str = "") -> PurposePolicy:
    """A policy with the given inline rule tables (`{ rule = "..." }` without braces) and more TOML."""
    body = ", ".join("{ " + r + " }" for r in rules)
    # Inline rule tables must come before any sub-table such as authorization_details.
    return policy(f"rules = [{body}]\n{extra}")


def context(
    subject: Mapping[str, Any] | None = None,
    *,
    details: list[dict[str, Any]] | None = None,
    now: float = FRIDAY_1430_PARIS,
    store: Store | None = None,
    client_id: str = "bank-web",
    **overrides: Any,
) -> RuleContext:
    claims = {"iss": IDP, "sub": "alice", "aud": "purpose-exchange"}
    claims.update(subject or {})
    return RuleContext(
        subject=claims,
        issuer=IDP,
        client_id=client_id,
        purpose="p",
        audience="https://payments.internal",
        details=details or [],
        now=now,
        store=store,
        **overrides,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """The real embedded store (SQLite file), as the exchange opens it."""
    opened = await open_store(StoreConfig(url=f"sqlite:///{tmp_path / 'exchange.db'}"))
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make `examples/rules` importable (as an operator's PYTHONPATH would), for the duration of a test."""

    def add() -> None:
        monkeypatch.syspath_prepend(str(EXAMPLES))

    return add


@pytest.fixture
async def bank_store(tmp_path: Path, examples_on_path: Callable[[], None]) -> AsyncIterator[SQLiteStore]:
    """MyBank's accounts in the exchange's database, for docs/RULES.md's worked example."""
    examples_on_path()
    path = tmp_path / "exchange.db"
    store = SQLiteStore(StoreConfig(url=f"sqlite:///{path}"))
    await store.open()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE accounts (number TEXT PRIMARY KEY, owner TEXT NOT NULL, frozen BOOLEAN)")
        conn.executemany(
            "INSERT INTO accounts VALUES (?, ?, ?)",
            [
                ("FR7630006000011234567890189", "alice", False),
                ("FR7630006000019999999999999", "alice", True),
                ("DE89370400440532013000", "bob", False),
            ],
        )
    conn.close()
    try:
        yield store
    finally:
        await store.close()
