"""MyBank's custom rules: what configuration cannot say, checked against the bank's own data.

Referenced from the policy as `{ rule = "python", function = "mybank.rules:account_not_frozen" }`, with
`examples/rules` on the service's PYTHONPATH. The `accounts` table lives in the exchange's database:

    CREATE TABLE accounts (number TEXT PRIMARY KEY, owner TEXT NOT NULL, frozen BOOLEAN NOT NULL);
"""

from __future__ import annotations

from rules import Allow, Deny, RuleContext

# `$1` parameters work on both backends (PostgreSQL and SQLite); never format values into SQL.
ACCOUNT = "SELECT owner, frozen FROM accounts WHERE number = $1"


async def account_not_frozen(ctx: RuleContext) -> Allow | Deny:
    """Every paying account exists, belongs to the user and is not frozen."""
    for detail in ctx.details:
        if detail.get("type") != "payment":
            continue
        row = await ctx.db.fetchrow(ACCOUNT, detail["account"])
        # One answer for "no such account" and "someone else's": don't confirm that an account exists.
        if row is None or row["owner"] != ctx.sub:
            return Deny("account_not_owned", "the account does not belong to the user")
        if row["frozen"]:
            return Deny("account_frozen", "the account is frozen")
    return Allow()


async def business_hours_step_up(ctx: RuleContext) -> Allow | Deny:
    """Large payments need a hardware-key login (an RFC 9470 step-up the client can act on)."""
    large = any(d.get("type") == "payment" and d.get("amount", 0) > 5000 for d in ctx.details)
    if large and ctx.claim("acr") != "urn:acr:hwk":
        return Deny(
            "hardware_key_required", "payments above 5000 need a hardware key", acr_values="urn:acr:hwk"
        )
    return Allow()
