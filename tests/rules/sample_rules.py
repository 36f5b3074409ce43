"""Python rules used by the tests, referenced as `tests.rules.sample_rules:NAME`."""

from __future__ import annotations

import asyncio
from typing import Any

from rules import Allow, Deny, RuleContext


async def allow_all(ctx: RuleContext) -> Allow | Deny:
    """Allows every request."""
    return Allow()


async def only_alice(ctx: RuleContext) -> Allow | Deny:
    """Only alice."""
    return Allow() if ctx.sub == "alice" else Deny("not_alice", "only alice may")


async def broken(ctx: RuleContext) -> Allow | Deny:
    raise KeyError("the secret account number 123")


async def slow(ctx: RuleContext) -> Allow | Deny:
    await asyncio.sleep(10)
    return Allow()


async def returns_true(ctx: RuleContext) -> Any:
    return True


async def bad_code(ctx: RuleContext) -> Allow | Deny:
    return Deny("Not A Code", "codes are lower snake case")


async def tamper(ctx: RuleContext) -> Allow | Deny:
    ctx.subject["sub"] = "mallory"  # type: ignore[index]
    return Allow()


async def writes(ctx: RuleContext) -> Allow | Deny:
    await ctx.db.fetch("DELETE FROM accounts")
    return Allow()


def not_async(ctx: RuleContext) -> Allow | Deny:
    return Allow()


async def two_args(ctx: RuleContext, extra: int) -> Allow | Deny:
    return Allow()


NOT_CALLABLE = 42
