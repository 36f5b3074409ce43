"""The engine: compiling all purposes at once, evaluation order, outcomes, the issue's policy end to end."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import msgspec
import pytest

from exchange.store import Store
from rules import Denial, PolicyError, RuleContext, RuleReport, compile_policies
from rules.context import freeze
from tests.rules.conftest import FRIDAY_1430_PARIS, IDP, context, rules_policy, settings

# The policy of issue 3, verbatim.
PAYMENTS_APPROVE = """
ttl = 60
single_use = true
rules = [
  { rule = "mfa" },
  { rule = "max_auth_age", seconds = 300 },
  { rule = "acr", at_least = "urn:acr:2fa", order = ["urn:acr:pwd", "urn:acr:2fa", "urn:acr:hwk"] },
  { rule = "claim", claim = "roles", contains = "payer" },
  { rule = "detail", field = "amount", max = 10000 },
  { rule = "detail", field = "currency", in = ["EUR", "USD"] },
  { rule = "subject_binding", field = "owner", claim = "sub" },
  { rule = "rate_limit", max = 5, per = 3600, key = "sub" },
  { rule = "python", function = "mybank.rules:account_not_frozen" },
]

[purposes."p".authorization_details.payment]
amount   = { type = "number", required = true, minimum = 0.01, maximum = 1000000 }
currency = { type = "string", required = true, enum = ["EUR", "USD", "GBP"] }
account  = { type = "string", required = true, pattern = "^[A-Z0-9]{8,34}$" }
owner    = { type = "string", required = true }

[purposes."p".delegation]
mode = "allowed"
actors = [ { issuer = "https://idp.example.com", sub = "svc-batch" } ]
"""

NOW = FRIDAY_1430_PARIS
GOOD_LOGIN = {"amr": ["pwd", "otp"], "acr": "urn:acr:2fa", "auth_time": int(NOW) - 60, "roles": ["payer"]}


def outcomes(decision: Any) -> list[tuple[str, str, str | None]]:
    return [(o.rule, o.outcome, o.code) for o in decision.outcomes]


class TestCompile:
    def test_every_problem_is_reported_at_once_with_its_key(self) -> None:
        config = settings(
            """rules = [
  { rule = "claim", claim = "roles" },
  { rule = "mfa" },
  { rule = "acr", at_least = "gold", order = ["silver"] },
  { rule = "time_window", timezone = "Nowhere/City" },
]"""
        )
        with pytest.raises(PolicyError) as caught:
            compile_policies(config)
        assert caught.value.problems == [
            'purposes."p".rules[0] (claim): a claim rule needs exactly one of equals, contains, in, matches',
            "purposes.\"p\".rules[2] (acr): at_least 'gold' is not one of order ['silver']",
            "purposes.\"p\".rules[3] (time_window): timezone 'Nowhere/City' is not a known IANA time zone "
            "(e.g. Europe/Paris)",
        ]
        assert str(caught.value).startswith('3 problems in purpose policies:\n  - purposes."p".rules[0]')

    def test_a_client_listing_an_unknown_purpose_is_a_problem(self) -> None:
        head = f"""
issuer = "http://127.0.0.1:8080"
[[trusted_issuers]]
issuer = "{IDP}"
jwks_file = "idp-jwks.json"
audiences = ["purpose-exchange"]
[[clients]]
client_id = "bank-web"
purposes = ["p", "payments.aprove"]
"""
        with pytest.raises(PolicyError) as caught:
            compile_policies(settings("", head=head))
        assert caught.value.problems == [
            "clients[0] (bank-web): purposes lists 'payments.aprove', which is not a configured purpose"
        ]

    @pytest.mark.parametrize(
        ("rule", "message"),
        [
            ('{ rule = "mfaa" }', r"Invalid value 'mfaa' - at `\$.purposes\[...\].rules\[0\].rule`"),
            (
                '{ rule = "mfa", method = ["otp"] }',
                r"Object contains unknown field `method` - at `\$.purposes\[...\]",
            ),
            (
                '{ rule = "rate_limit", max = 5, per = 60, key = "ip" }',
                r"Invalid enum value 'ip' - at `\$.purposes\[...\].rules\[0\].key`",
            ),
            ('{ rule = "claim", claim = "x", equals = "y", code = "Bad Code" }', r"rules\[0\].code"),
        ],
    )
    def test_unknown_rules_and_parameters_fail_decoding_with_the_key(self, rule: str, message: str) -> None:
        with pytest.raises(msgspec.ValidationError, match=message):
            settings(f"rules = [{rule}]")

    def test_the_policy_carries_what_the_purpose_grants(self, examples_on_path: Callable[[], None]) -> None:
        examples_on_path()
        policy = compile_policies(settings(PAYMENTS_APPROVE))["p"]
        assert (policy.name, policy.audiences, policy.ttl, policy.single_use) == (
            "p",
            ("https://payments.internal",),
            60,
            True,
        )


class TestEvaluation:
    async def test_cheap_rules_run_first_and_counting_last_keeping_configured_order(self) -> None:
        policy = rules_policy(
            'rule = "rate_limit", max = 5, per = 60',
            'rule = "python", function = "tests.rules.sample_rules:allow_all"',
            'rule = "claim", claim = "sub", equals = "alice"',
            'rule = "mfa"',
        )
        assert [label for label, _ in policy.describe()] == [
            "claim[sub]",
            "mfa",
            "python[tests.rules.sample_rules:allow_all]",
            "rate_limit[sub]",
        ]

    async def test_the_first_denial_stops_evaluation(self) -> None:
        policy = rules_policy(
            'rule = "claim", claim = "sub", equals = "alice"',
            'rule = "mfa"',
            'rule = "acr", at_least = "b", order = ["a", "b"]',
        )
        decision = await policy.evaluate(context({"amr": ["pwd"], "acr": "a"}))
        assert not decision.allowed
        assert outcomes(decision) == [("claim[sub]", "allow", None), ("mfa", "deny", "mfa_required")]

    async def test_an_empty_policy_allows(self) -> None:
        decision = await rules_policy().evaluate(context())
        assert (decision.allowed, decision.outcomes, decision.denial) == (True, [], None)

    def test_the_context_is_read_only_and_its_repr_has_no_claims(self) -> None:
        ctx = context(
            {"ssn": "123-45-6789", "org": {"roles": ["a"]}}, details=[{"type": "payment", "amount": 1}]
        )
        with pytest.raises(TypeError):
            ctx.subject["sub"] = "mallory"  # type: ignore[index]
        with pytest.raises(TypeError):
            ctx.subject["org"]["roles"] = ["admin"]
        with pytest.raises(TypeError):
            ctx.details[0]["amount"] = 10**9  # type: ignore[index]
        with pytest.raises(AttributeError):
            ctx.now = 0  # type: ignore[misc]
        assert ctx.subject["org"]["roles"] == ("a",)
        assert ctx.claim("org.roles") == ("a",)
        assert "123-45" not in repr(ctx)
        assert repr(ctx) == (f"RuleContext(purpose='p', client_id='bank-web', issuer='{IDP}', sub='alice')")

    def test_freeze_copies_every_container_at_any_depth_and_keys_become_text(self) -> None:
        inner: list[Any] = [1, "a", None]
        source: dict[Any, Any] = {
            "flat": inner,
            "deep": [{"x": [True]}, (2.5,)],
            "m": MappingProxyType({"k": [3]}),
        }
        frozen = freeze(source)
        assert frozen == {
            "flat": (1, "a", None),
            "deep": (MappingProxyType({"x": (True,)}), (2.5,)),
            "m": {"k": (3,)},
        }
        assert type(frozen) is MappingProxyType and type(frozen["deep"][0]) is MappingProxyType
        inner.append("later")
        source["new"] = 1
        assert frozen["flat"] == (1, "a", None) and "new" not in frozen  # copies, not views
        assert freeze({1: "one", "two": [2]}) == {"1": "one", "two": (2,)}  # as JSON would name them
        assert freeze(["s", [1]]) == ("s", (1,))
        underlying: dict[str, Any] = {"amr": ["pwd"]}  # verified claims arrive behind a proxy
        proxied = freeze(MappingProxyType(underlying))
        underlying["amr"].append("mfa")
        underlying["sub"] = "mallory"
        assert proxied == {"amr": ("pwd",)}

    def test_the_context_snapshot_does_not_follow_the_callers_dicts(self) -> None:
        claims: dict[str, Any] = {"sub": "alice", "roles": ["viewer"]}
        ctx = RuleContext(subject=claims, issuer=IDP, client_id="c", purpose="p", audience="a")
        claims["roles"].append("admin")
        assert ctx.subject["roles"] == ("viewer",)


class TestIssuePolicy:
    """The payment approval of issue 3: granted, denied with a code, denied with a step-up, then granted."""

    @pytest.fixture
    def payments(self, examples_on_path: Callable[[], None]) -> Any:
        examples_on_path()
        return compile_policies(settings(PAYMENTS_APPROVE))["p"]

    async def evaluate(self, policy: Any, subject: dict[str, Any], amount: float, store: Store) -> Any:
        details = policy.validate_details(
            msgspec.json.encode(
                [
                    {
                        "type": "payment",
                        "amount": amount,
                        "currency": "EUR",
                        "account": "FR7630006000011234567890189",
                        "owner": "alice",
                    }
                ]
            ).decode()
        )
        return await policy.evaluate(context(subject, details=details, now=NOW, store=store))

    async def test_a_denial_with_a_code(self, payments: Any, store: Store) -> None:
        decision = await self.evaluate(payments, GOOD_LOGIN, 20000, store)
        assert decision.denial == Denial(code="amount_too_high", description="amount must be at most 10000")
        assert outcomes(decision)[-1] == ("detail[amount]", "deny", "amount_too_high")

    async def test_a_stale_login_gets_a_step_up_then_a_fresh_one_is_granted(
        self, payments: Any, bank_store: Store
    ) -> None:
        store = bank_store
        stale = {**GOOD_LOGIN, "auth_time": int(NOW) - 3600}
        decision = await self.evaluate(payments, stale, 100, store)
        assert decision.denial == Denial(
            code="auth_too_old",
            description="a login within the last 300 seconds is required",
            error="insufficient_user_authentication",
            max_age=300,
        )
        decision = await self.evaluate(payments, GOOD_LOGIN, 100, store)
        assert decision.allowed
        assert outcomes(decision) == [
            ("mfa", "allow", None),
            ("max_auth_age", "allow", None),
            ("acr", "allow", None),
            ("claim[roles]", "allow", None),
            ("detail[amount]", "allow", None),
            ("detail[currency]", "allow", None),
            ("subject_binding[owner]", "allow", None),
            ("python[mybank.rules:account_not_frozen]", "allow", None),
            ("rate_limit[sub]", "allow", None),
        ]


class TestExplain:
    async def test_explain_reports_every_rule_and_does_not_count(self, store: Store) -> None:
        policy = rules_policy(
            'rule = "rate_limit", max = 1, per = 60',
            'rule = "claim", claim = "roles", contains = "payer"',
            'rule = "mfa"',
        )
        ctx = context({"roles": ["payer"], "amr": ["pwd"]}, now=1_800_000_000.0, store=store)
        decision, reports = await policy.explain(ctx)
        assert decision.denial is not None
        assert decision.denial.code == "mfa_required"
        assert reports == [
            RuleReport("claim[roles]", 'claim "roles" must contain "payer"', "allow"),
            RuleReport(
                "mfa", "amr must include one of face, fpt, hwk, mfa, otp, swk", "deny", code="mfa_required"
            ),
            RuleReport("rate_limit[sub]", "at most 1 tokens per subject per 60 seconds", "not evaluated"),
        ]
        # A passing dry run leaves the allowance untouched.
        passing = context({"roles": ["payer"], "amr": ["otp"]}, now=1_800_000_000.0, store=store)
        assert (await policy.explain(passing))[0].allowed
        assert (await policy.evaluate(passing)).allowed
