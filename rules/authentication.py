"""Rules about how the user logged in: `mfa`, `acr`, `max_auth_age`.

What they lack can be fixed by logging in again, so they deny with an RFC 9470 step-up answer
(`insufficient_user_authentication` plus the `acr_values` / `max_age` to ask the identity provider for).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rules.context import Allow, Deny, RuleContext
from rules.rule import Rule, Scope, Stage
from schemas.rules import AcrRule, MaxAuthAgeRule, MfaRule

# A login this far in the future is not clock skew but a broken or forged claim.
_AUTH_TIME_SKEW = 300


@dataclass(frozen=True, slots=True)
class MfaCheck:
    methods: frozenset[str]
    acr_values: str | None
    code: str
    stage: Stage = Stage.PURE
    label: str = "mfa"

    def describe(self) -> str:
        return f"amr must include one of {', '.join(sorted(self.methods))}"

    async def check(self, ctx: RuleContext) -> Allow | Deny:
        amr = ctx.subject.get("amr")
        # The frozen subject holds its arrays as tuples: that exact type first, the ABC check otherwise.
        if type(amr) is tuple or (isinstance(amr, Sequence) and not isinstance(amr, str)):
            methods = self.methods
            for m in amr:
                if isinstance(m, str) and m in methods:
                    return Allow()
        return Deny(
            self.code,
            "multi-factor authentication is required",
            acr_values=self.acr_values,
            step_up=True,
        )


def compile_mfa(cfg: MfaRule, scope: Scope) -> Rule | None:
    return MfaCheck(frozenset(cfg.methods), cfg.acr_values, cfg.code or "mfa_required")


@dataclass(frozen=True, slots=True)
class AcrCheck:
    at_least: str
    order: tuple[str, ...]
    code: str
    stage: Stage = Stage.PURE
    label: str = "acr"

    def describe(self) -> str:
        return f"acr must be {self.at_least} or stronger (weakest first: {', '.join(self.order)})"

    async def check(self, ctx: RuleContext) -> Allow | Deny:
        acr = ctx.subject.get("acr")
        floor = self.order.index(self.at_least)
        # An acr the policy does not rank is treated as the weakest: unknown never means strong.
        if isinstance(acr, str) and acr in self.order and self.order.index(acr) >= floor:
            return Allow()
        return Deny(
            self.code,
            f"an authentication level of at least {self.at_least} is required",
            # RFC 9470: space-separated, in order of preference; any of them satisfies the rule.
            acr_values=" ".join(self.order[floor:]),
            step_up=True,
        )


def compile_acr(cfg: AcrRule, scope: Scope) -> Rule | None:
    ok = True
    if cfg.at_least not in cfg.order:
        scope.problem(f"at_least {cfg.at_least!r} is not one of order {cfg.order!r}")
        ok = False
    if len(set(cfg.order)) != len(cfg.order):
        scope.problem("order lists a level twice")
        ok = False
    return AcrCheck(cfg.at_least, tuple(cfg.order), cfg.code or "acr_too_low") if ok else None


@dataclass(frozen=True, slots=True)
class MaxAuthAgeCheck:
    seconds: int
    code: str
    stage: Stage = Stage.PURE
    label: str = "max_auth_age"

    def describe(self) -> str:
        return f"the user must have authenticated within the last {self.seconds} seconds"

    async def check(self, ctx: RuleContext) -> Allow | Deny:
        auth_time = ctx.subject.get("auth_time")
        if (
            isinstance(auth_time, int | float)
            and not isinstance(auth_time, bool)
            and ctx.now - self.seconds <= auth_time <= ctx.now + _AUTH_TIME_SKEW
        ):
            return Allow()
        # Without auth_time freshness cannot be shown; asking with max_age makes the IdP include it
        # (OIDC Core §3.1.2.1).
        return Deny(
            self.code,
            f"a login within the last {self.seconds} seconds is required",
            max_age=self.seconds,
            step_up=True,
        )


def compile_max_auth_age(cfg: MaxAuthAgeRule, scope: Scope) -> Rule | None:
    return MaxAuthAgeCheck(cfg.seconds, cfg.code or "auth_too_old")
