"""The rule engine: purpose policies compiled from configuration, evaluated per exchange.

The exchange calls `compile_policies(settings)` once at start-up, then for each request
`policy.validate_details(...)`, `policy.check_delegation(...)` and `await policy.evaluate(ctx)`.
Python rules import `RuleContext`, `Allow` and `Deny` from here. See docs/RULES.md.
"""

from __future__ import annotations

from rules.context import Allow, Deny, RuleContext, RuleDatabase
from rules.delegation import actor_chain
from rules.denials import (
    INSUFFICIENT_USER_AUTHENTICATION,
    INVALID_AUTHORIZATION_DETAILS,
    INVALID_REQUEST,
    INVALID_TARGET,
    RULE_ERROR,
    Denial,
    DenialError,
    PolicyError,
)
from rules.engine import Decision, PurposePolicy, RuleReport, compile_policies
from rules.store import RuleStore, StoreUnavailable

__all__ = [
    "INSUFFICIENT_USER_AUTHENTICATION",
    "INVALID_AUTHORIZATION_DETAILS",
    "INVALID_REQUEST",
    "INVALID_TARGET",
    "RULE_ERROR",
    "Allow",
    "Decision",
    "Denial",
    "DenialError",
    "Deny",
    "PolicyError",
    "PurposePolicy",
    "RuleContext",
    "RuleDatabase",
    "RuleReport",
    "RuleStore",
    "StoreUnavailable",
    "actor_chain",
    "compile_policies",
]
