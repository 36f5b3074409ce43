"""The python rule: operator code, imported once, failing closed; and the worked database example."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog

from exchange.store.sqlite import SQLiteStore
from rules import Denial, PolicyError
from schemas.config import StoreConfig
from tests.rules.conftest import context, rules_policy

SAMPLE = "tests.rules.sample_rules"


def python_rule(name: str, **params: Any) -> str:
    extra = "".join(f", {key} = {value}" for key, value in params.items())
    return f'rule = "python", function = "{SAMPLE}:{name}"{extra}'


class TestOutcomes:
    async def test_allow(self) -> None:
        decision = await rules_policy(python_rule("allow_all")).evaluate(context())
        assert decision.allowed
        assert [(o.rule, o.outcome) for o in decision.outcomes] == [(f"python[{SAMPLE}:allow_all]", "allow")]

    async def test_deny_carries_the_rules_code(self) -> None:
        decision = await rules_policy(python_rule("only_alice")).evaluate(context({"sub": "bob"}))
        assert decision.denial == Denial(code="not_alice", description="only alice may")
        assert decision.outcomes[0].code == "not_alice"

    @pytest.mark.parametrize(
        ("rule", "error_type"),
        [
            (python_rule("broken"), "KeyError"),
            (python_rule("slow", timeout=0.05), "TimeoutError"),
            (python_rule("returns_true"), "TypeError"),
            (python_rule("bad_code"), "ValueError"),
            (python_rule("tamper"), "TypeError"),
        ],
    )
    async def test_a_failing_rule_denies_with_rule_error(self, rule: str, error_type: str) -> None:
        with structlog.testing.capture_logs() as logs:
            decision = await rules_policy(rule).evaluate(context())
        assert decision.denial == Denial(
            code="rule_error", description="a required validation could not be completed"
        )
        assert [(o.outcome, o.code) for o in decision.outcomes] == [("error", "rule_error")]
        # The log says which rule failed and how, never the exception's text (it may hold data).
        assert logs == [
            {
                "event": "rule_failed",
                "log_level": "warning",
                "purpose": "p",
                "rule": decision.outcomes[0].rule,
                "error_type": error_type,
            }
        ]

    async def test_a_rule_cannot_change_what_later_rules_see(self) -> None:
        policy = rules_policy(python_rule("tamper"))
        ctx = context()
        await policy.evaluate(ctx)
        assert ctx.subject["sub"] == "alice"

    async def test_a_deny_with_hints_is_a_step_up(self) -> None:
        policy = rules_policy('rule = "python", function = "mybank.rules:business_hours_step_up"')
        decision = await policy.evaluate(context(details=[{"type": "payment", "amount": 6000}]))
        assert decision.denial == Denial(
            code="hardware_key_required",
            description="payments above 5000 need a hardware key",
            error="insufficient_user_authentication",
            acr_values="urn:acr:hwk",
        )

    @pytest.fixture(autouse=True)
    def _examples(self, examples_on_path: Callable[[], None]) -> None:
        examples_on_path()


class TestCompile:
    @pytest.mark.parametrize(
        ("function", "message"),
        [
            (
                "nowhere.rules:check",
                "cannot import 'nowhere.rules' (ModuleNotFoundError: No module named 'nowhere')",
            ),
            (f"{SAMPLE}:missing", f"module '{SAMPLE}' has no attribute 'missing'"),
            (
                f"{SAMPLE}:not_async",
                f"{SAMPLE}:not_async must be an async function (async def not_async(ctx))",
            ),
            (
                f"{SAMPLE}:NOT_CALLABLE",
                f"{SAMPLE}:NOT_CALLABLE must be an async function (async def NOT_CALLABLE(ctx))",
            ),
            (f"{SAMPLE}:two_args", f"{SAMPLE}:two_args must take exactly one argument, the RuleContext"),
        ],
    )
    def test_an_unreachable_rule_stops_start_up(self, function: str, message: str) -> None:
        with pytest.raises(PolicyError) as caught:
            rules_policy(f'rule = "python", function = "{function}"')
        assert caught.value.problems == [f'purposes."p".rules[0] (python): {message}']

    def test_a_malformed_reference_is_a_config_error(self) -> None:
        with pytest.raises(msgspec.ValidationError, match=r"rules\[0\]\.function"):
            rules_policy('rule = "python", function = "tests/rules/sample_rules.py"')


class TestDatabaseRule:
    """docs/RULES.md's worked example: the paying account must belong to the user and not be frozen."""

    @pytest.mark.parametrize(
        ("account", "code"),
        [
            ("FR7630006000011234567890189", None),
            ("FR7630006000019999999999999", "account_frozen"),
            ("DE89370400440532013000", "account_not_owned"),
            ("XX00000000000000", "account_not_owned"),
            # An injection attempt is just an unknown account number: the value is a parameter.
            ("' OR '1'='1", "account_not_owned"),
        ],
    )
    async def test_account_not_frozen(self, bank_store: SQLiteStore, account: str, code: str | None) -> None:
        policy = rules_policy('rule = "python", function = "mybank.rules:account_not_frozen"')
        details = [{"type": "payment", "amount": 10, "account": account}]
        decision = await policy.evaluate(context(details=details, store=bank_store))
        assert (decision.denial.code if decision.denial else None) == code

    async def test_a_rule_cannot_write_through_the_handle(self, bank_store: SQLiteStore) -> None:
        decision = await rules_policy(python_rule("writes")).evaluate(context(store=bank_store))
        assert decision.denial is not None
        assert decision.denial.code == "rule_error"

    async def test_a_store_that_cannot_answer_fails_closed(
        self, tmp_path: Path, examples_on_path: Callable[[], None]
    ) -> None:
        examples_on_path()
        # Never opened: nothing can be read, and the answer is a retryable outage, not a verdict.
        store = SQLiteStore(StoreConfig(url=f"sqlite:///{tmp_path / 'plain.db'}"))
        policy = rules_policy('rule = "python", function = "mybank.rules:account_not_frozen"')
        details = [{"type": "payment", "amount": 10, "account": "FR7630006000011234567890189"}]
        decision = await policy.evaluate(context(details=details, store=store))
        assert decision.denial is not None
        assert (decision.denial.code, decision.denial.error) == (
            "store_unavailable",
            "temporarily_unavailable",
        )
