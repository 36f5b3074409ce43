"""Purpose policies: compiled once at start-up, evaluated for every exchange.

`compile_policies` turns the configured purposes into PurposePolicy objects, reporting every problem
at once; `PurposePolicy.evaluate` runs the rules and answers a Decision: it never raises, and anything
unexpected (a rule raising, a store timing out) denies with `rule_error` (fail closed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import structlog

from rules.attributes import compile_claim, compile_detail, compile_subject_binding
from rules.authentication import compile_acr, compile_max_auth_age, compile_mfa
from rules.context import Allow, Deny, RuleContext
from rules.delegation import DelegationPolicy
from rules.denials import (
    INSUFFICIENT_USER_AUTHENTICATION,
    RULE_ERROR,
    STORE_UNAVAILABLE,
    Denial,
    PolicyError,
    rule_error,
    store_unavailable,
)
from rules.details import DetailsSchema
from rules.limits import compile_rate_limit, compile_time_window
from rules.python import compile_python
from rules.rule import Rule, Scope, purpose_key
from rules.store import StoreUnavailable
from rules.txn import TxnMapping
from schemas.config import Purpose, Settings
from schemas.records import RuleOutcome
from schemas.rules import (
    AcrRule,
    ClaimRule,
    DetailRule,
    MaxAuthAgeRule,
    MfaRule,
    PythonRule,
    RateLimitRule,
    RuleBase,
    SubjectBindingRule,
    TimeWindowRule,
)

_log = structlog.get_logger("rules")

_COMPILERS: Mapping[type[RuleBase], Callable[[Any, Scope], Rule | None]] = {
    ClaimRule: compile_claim,
    MfaRule: compile_mfa,
    AcrRule: compile_acr,
    MaxAuthAgeRule: compile_max_auth_age,
    DetailRule: compile_detail,
    SubjectBindingRule: compile_subject_binding,
    TimeWindowRule: compile_time_window,
    RateLimitRule: compile_rate_limit,
    PythonRule: compile_python,
}


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer: `outcomes` has one entry per rule evaluated, in evaluation order."""

    allowed: bool
    outcomes: list[RuleOutcome]
    denial: Denial | None


@dataclass(frozen=True, slots=True)
class RuleReport:
    """One line of `exchange rules explain`: what a rule demands and what it answered."""

    label: str
    requirement: str
    outcome: Literal["allow", "deny", "error", "not evaluated"]
    code: str | None = None


def _denial(deny: Deny) -> Denial:
    step_up = deny.step_up or deny.acr_values is not None or deny.max_age is not None
    if step_up:
        return Denial(
            code=deny.code,
            description=deny.description,
            error=INSUFFICIENT_USER_AUTHENTICATION,
            acr_values=deny.acr_values,
            max_age=deny.max_age,
        )
    return Denial(code=deny.code, description=deny.description, retry_after=deny.retry_after)


class PurposePolicy:
    """One purpose: what it grants (audiences, ttl, single_use) and what it demands (rules, details,
    delegation)."""

    def __init__(
        self,
        name: str,
        *,
        audiences: Sequence[str],
        ttl: int,
        single_use: bool,
        rules: Sequence[Rule],
        details: DetailsSchema,
        delegation: DelegationPolicy,
        txn: TxnMapping | None = None,
    ) -> None:
        self.name = name
        self.audiences: tuple[str, ...] = tuple(audiences)
        self.ttl = ttl
        self.single_use = single_use
        self.details = details
        self.delegation = delegation
        # Set when the purpose issues Txn-Tokens: what enters tctx and rctx (rules/txn.py).
        self.txn = txn
        # Cheap rules first, side effects last; a stable sort keeps the configured order within a stage.
        self.rules: tuple[Rule, ...] = tuple(sorted(rules, key=lambda rule: rule.stage))
        # The outcome of each rule that allows, made once (immutable): a request allocates none.
        self._allowed: tuple[RuleOutcome, ...] = tuple(
            RuleOutcome(rule=rule.label, outcome="allow") for rule in self.rules
        )

    @property
    def detail_types(self) -> tuple[str, ...]:
        """The accepted authorization_details types (RFC 9396 metadata)."""
        return self.details.type_names

    def describe(self) -> list[tuple[str, str]]:
        """(label, requirement) per rule, in evaluation order: for `exchange rules explain`."""
        return [(rule.label, rule.describe()) for rule in self.rules]

    async def explain(self, ctx: RuleContext) -> tuple[Decision, list[RuleReport]]:
        """Evaluate without side effects (dry run) and report every rule, evaluated or not."""
        decision = await self.evaluate(replace(ctx, dry_run=True))
        reports = []
        for index, rule in enumerate(self.rules):
            if index < len(decision.outcomes):
                outcome = decision.outcomes[index]
                reports.append(RuleReport(rule.label, rule.describe(), outcome.outcome, outcome.code))
            else:
                reports.append(RuleReport(rule.label, rule.describe(), "not evaluated"))
        return decision, reports

    def validate_details(self, raw: str | None) -> list[dict[str, Any]]:
        """The request's authorization_details, validated; [] when absent. Raises DenialError."""
        return self.details.validate(raw)

    def check_delegation(
        self,
        subject: Mapping[str, Any],
        actor: Mapping[str, Any] | None,
        actor_issuer: str | None,
        *,
        client_id: str | None = None,
    ) -> dict[str, Any] | None:
        """The RFC 8693 `act` claim for the purpose token, or None. Raises DenialError."""
        return self.delegation.check(subject, actor, actor_issuer, client_id=client_id)

    async def evaluate(self, ctx: RuleContext) -> Decision:
        """Run the rules; the first denial stops evaluation. Never raises."""
        for index, rule in enumerate(self.rules):
            try:
                result = await rule.check(ctx)
            except StoreUnavailable:  # an outage, not a verdict: the client may retry (503)
                _log.warning("rule_store_unavailable", purpose=self.name, rule=rule.label)
                return self._stopped(index, "error", STORE_UNAVAILABLE, store_unavailable())
            except Exception as exc:  # fail closed; the reason is for operators, not the client
                # Only the exception's type is logged: its message or traceback locals could hold claims.
                _log.warning("rule_failed", purpose=self.name, rule=rule.label, error_type=type(exc).__name__)
                return self._stopped(index, "error", RULE_ERROR, rule_error())
            if isinstance(result, Deny):
                return self._stopped(index, "deny", result.code, _denial(result))
            if not isinstance(result, Allow):
                return self._stopped(index, "error", RULE_ERROR, rule_error())
        return Decision(allowed=True, outcomes=list(self._allowed), denial=None)

    def _stopped(self, index: int, outcome: Literal["deny", "error"], code: str, denial: Denial) -> Decision:
        """The denial of rule `index`: the outcomes of the rules before it (all allowed), then its own."""
        stopped = RuleOutcome(rule=self.rules[index].label, outcome=outcome, code=code)
        return Decision(allowed=False, outcomes=[*self._allowed[:index], stopped], denial=denial)


def _compile_purpose(name: str, purpose: Purpose, settings: Settings, problems: list[str]) -> PurposePolicy:
    key = purpose_key(name)
    scope = Scope(purpose=name, settings=settings, details=DetailsSchema({}), problems=problems, where=key)
    scope.details = DetailsSchema.compile(purpose.authorization_details, scope)
    delegation = DelegationPolicy.compile(purpose.delegation, scope)
    txn = TxnMapping.compile(name, purpose.txn_token, scope) if purpose.txn_token is not None else None
    if not purpose.audiences and txn is None:
        scope.problem("a purpose needs an audience (for purpose tokens) or a txn_token table (or both)")
    rules: list[Rule] = []
    for index, config in enumerate(purpose.rules):
        scope.where = f"{key}.rules[{index}] ({type(config).__struct_config__.tag})"
        compiled = _COMPILERS[type(config)](config, scope)
        if compiled is not None:
            rules.append(compiled)
    return PurposePolicy(
        name,
        audiences=purpose.audiences,
        ttl=purpose.ttl,
        single_use=purpose.single_use,
        rules=rules,
        details=scope.details,
        delegation=delegation,
        txn=txn,
    )


def compile_policies(settings: Settings) -> dict[str, PurposePolicy]:
    """Every configured purpose, compiled. Raises PolicyError listing every problem found."""
    problems: list[str] = []
    for index, client in enumerate(settings.clients):
        for purpose in client.purposes:
            if purpose not in settings.purposes:
                problems.append(
                    f"clients[{index}] ({client.client_id}): purposes lists {purpose!r}, "
                    "which is not a configured purpose"
                )
    policies = {
        name: _compile_purpose(name, purpose, settings, problems)
        for name, purpose in settings.purposes.items()
    }
    if problems:
        raise PolicyError(problems)
    return policies
