"""claim, detail and subject_binding: allow, deny with the stable code, bad parameters at compile time."""

from __future__ import annotations

from typing import Any

import pytest

from rules import PolicyError
from tests.rules.conftest import context, rules_policy

PAYMENT = """
[purposes."p".authorization_details.payment]
amount   = { type = "number", required = true, minimum = 0.01, maximum = 1000000 }
currency = { type = "string", required = true, enum = ["EUR", "USD", "GBP"] }
account  = { type = "string", pattern = "^[A-Z0-9]{8,34}$" }
owner    = { type = "string" }
count    = { type = "integer" }

[purposes."p".authorization_details.report]
owner    = { type = "string" }
actions  = { type = "array", enum = ["read", "export", "delete"] }
"""


async def decide(
    rule: str,
    subject: dict[str, Any] | None = None,
    details: list[dict[str, Any]] | None = None,
    extra: str = PAYMENT,
) -> str | None:
    """The denial code of a one-rule policy, or None when it allows."""
    decision = await rules_policy(rule, extra=extra).evaluate(context(subject, details=details))
    assert decision.allowed == (decision.denial is None)
    return decision.denial.code if decision.denial else None


class TestClaim:
    @pytest.mark.parametrize(
        ("rule", "subject", "code"),
        [
            ('rule = "claim", claim = "roles", contains = "payer"', {"roles": ["viewer", "payer"]}, None),
            ('rule = "claim", claim = "roles", contains = "payer"', {"roles": ["viewer"]}, "claim_mismatch"),
            ('rule = "claim", claim = "roles", contains = "payer"', {}, "claim_mismatch"),
            # A space-separated string is a set of words, never a substring.
            ('rule = "claim", claim = "scope", contains = "admin"', {"scope": "read admin"}, None),
            ('rule = "claim", claim = "scope", contains = "admin"', {"scope": "nonadmin"}, "claim_mismatch"),
            ('rule = "claim", claim = "tenant", equals = "acme"', {"tenant": "acme"}, None),
            ('rule = "claim", claim = "tenant", equals = "acme"', {"tenant": "acme2"}, "claim_mismatch"),
            # Strict equality: a boolean never equals a number, a string never a number.
            ('rule = "claim", claim = "level", equals = 1', {"level": True}, "claim_mismatch"),
            ('rule = "claim", claim = "level", equals = 1', {"level": "1"}, "claim_mismatch"),
            ('rule = "claim", claim = "level", equals = 1', {"level": 1.0}, None),
            ('rule = "claim", claim = "verified", equals = true', {"verified": True}, None),
            ('rule = "claim", claim = "country", in = ["FR", "DE"]', {"country": "DE"}, None),
            ('rule = "claim", claim = "country", in = ["FR", "DE"]', {"country": "US"}, "claim_mismatch"),
            ('rule = "claim", claim = "country", in = ["FR", "DE"]', {"country": ["FR"]}, "claim_mismatch"),
            (
                'rule = "claim", claim = "email", matches = ".+@bank\\\\.example"',
                {"email": "a@bank.example"},
                None,
            ),
            (
                'rule = "claim", claim = "email", matches = ".+@bank\\\\.example"',
                {"email": "a@bank.example.evil"},
                "claim_mismatch",
            ),
            # Dotted paths reach into nested claims; URL-named claims resolve as one key.
            (
                'rule = "claim", claim = "realm_access.roles", contains = "payer"',
                {"realm_access": {"roles": ["payer"]}},
                None,
            ),
            (
                'rule = "claim", claim = "realm_access.roles", contains = "payer"',
                {"realm_access": {"groups": ["payer"]}},
                "claim_mismatch",
            ),
            (
                'rule = "claim", claim = "https://bank.example/roles", contains = "payer"',
                {"https://bank.example/roles": ["payer"]},
                None,
            ),
            (
                'rule = "claim", claim = "roles", contains = "payer", code = "payer_role_required"',
                {},
                "payer_role_required",
            ),
        ],
    )
    async def test_claim_rule(self, rule: str, subject: dict[str, Any], code: str | None) -> None:
        assert await decide(rule, subject) == code

    async def test_denial_names_the_requirement_not_the_users_value(self) -> None:
        decision = await rules_policy('rule = "claim", claim = "tenant", equals = "acme"').evaluate(
            context({"tenant": "secret-tenant-name"})
        )
        assert decision.denial is not None
        assert decision.denial.error == "invalid_request"
        assert decision.denial.description == 'claim "tenant" must equal "acme"'

    @pytest.mark.parametrize(
        ("rule", "message"),
        [
            (
                'rule = "claim", claim = "roles"',
                "a claim rule needs exactly one of equals, contains, in, matches",
            ),
            (
                'rule = "claim", claim = "roles", equals = "a", contains = "b"',
                "a claim rule needs exactly one of equals, contains, in, matches",
            ),
            ('rule = "claim", claim = "roles", in = []', '"in" needs at least one value'),
            (
                'rule = "claim", claim = "roles", matches = "(unclosed"',
                "matches '(unclosed' is not a valid regular expression "
                "(missing ), unterminated subpattern at position 0)",
            ),
        ],
    )
    def test_bad_parameters_are_rejected_at_compile_time(self, rule: str, message: str) -> None:
        with pytest.raises(PolicyError) as caught:
            rules_policy(rule)
        assert caught.value.problems == [f'purposes."p".rules[0] (claim): {message}']


class TestDetail:
    @pytest.mark.parametrize(
        ("rule", "details", "code"),
        [
            ('rule = "detail", field = "amount", max = 10000', [{"type": "payment", "amount": 10000}], None),
            (
                'rule = "detail", field = "amount", max = 10000',
                [{"type": "payment", "amount": 10000.01}],
                "amount_too_high",
            ),
            (
                'rule = "detail", field = "amount", min = 10',
                [{"type": "payment", "amount": 9.99}],
                "amount_too_low",
            ),
            (
                'rule = "detail", field = "currency", in = ["EUR", "USD"]',
                [{"type": "payment", "currency": "EUR"}],
                None,
            ),
            (
                'rule = "detail", field = "currency", in = ["EUR", "USD"]',
                [{"type": "payment", "currency": "GBP"}],
                "currency_not_allowed",
            ),
            (
                'rule = "detail", field = "account", matches = "^FR[0-9]+$"',
                [{"type": "payment", "account": "FR123"}],
                None,
            ),
            (
                'rule = "detail", field = "account", matches = "^FR[0-9]+$"',
                [{"type": "payment", "account": "DE123"}],
                "account_invalid_format",
            ),
            # A rule about a field demands the field: absent details cannot pass a bound.
            ('rule = "detail", field = "amount", max = 10000', [], "amount_missing"),
            # Every entry carrying the field must pass, not just the first.
            (
                'rule = "detail", field = "amount", max = 100',
                [{"type": "payment", "amount": 5}, {"type": "payment", "amount": 500}],
                "amount_too_high",
            ),
            # Restricted to one type, other types' fields of the same name are not looked at.
            (
                'rule = "detail", field = "owner", type = "report", in = ["alice"]',
                [{"type": "payment", "owner": "bob"}, {"type": "report", "owner": "alice"}],
                None,
            ),
            # Arrays pass when every item does.
            (
                'rule = "detail", field = "actions", in = ["read"]',
                [{"type": "report", "actions": ["read"]}],
                None,
            ),
            (
                'rule = "detail", field = "actions", in = ["read"]',
                [{"type": "report", "actions": ["read", "export"]}],
                "actions_not_allowed",
            ),
            (
                'rule = "detail", field = "amount", max = 10, code = "needs_approval"',
                [{"type": "payment", "amount": 11}],
                "needs_approval",
            ),
        ],
    )
    async def test_detail_rule(self, rule: str, details: list[dict[str, Any]], code: str | None) -> None:
        assert await decide(rule, details=details) == code

    @pytest.mark.parametrize(
        ("rule", "message"),
        [
            (
                'rule = "detail", field = "amout", max = 1',
                "field 'amout' is not declared in any accepted authorization_details type "
                "(payment: amount, currency, account, owner, count; report: owner, actions)",
            ),
            (
                'rule = "detail", field = "amount", type = "transfer", max = 1',
                "type 'transfer' is not an accepted authorization_details type (accepted: payment, report)",
            ),
            (
                'rule = "detail", field = "amount"',
                "a detail rule needs at least one of max, min, in, matches",
            ),
            (
                'rule = "detail", field = "currency", max = 1',
                "max/min need a number or integer field; 'currency' is string",
            ),
            (
                'rule = "detail", field = "amount", matches = "1"',
                "matches needs a string field; 'amount' is number",
            ),
            ('rule = "detail", field = "amount", min = 5, max = 1', "min 5 is greater than max 1"),
            (
                'rule = "detail", field = "count", in = [1, "2"]',
                "in value '2' can never equal 'count' (integer)",
            ),
            (
                'rule = "detail", field = "account", matches = "["',
                "matches '[' is not a valid regular expression (unterminated character set at position 0)",
            ),
        ],
    )
    def test_bad_parameters_are_rejected_at_compile_time(self, rule: str, message: str) -> None:
        with pytest.raises(PolicyError) as caught:
            rules_policy(rule, extra=PAYMENT)
        assert caught.value.problems == [f'purposes."p".rules[0] (detail): {message}']

    def test_a_detail_rule_without_any_accepted_type_is_rejected(self) -> None:
        with pytest.raises(PolicyError) as caught:
            rules_policy('rule = "detail", field = "amount", max = 1', extra="")
        assert caught.value.problems == [
            "purposes.\"p\".rules[0] (detail): field 'amount' is not declared in any accepted "
            "authorization_details type (the purpose declares no authorization_details types)"
        ]

    async def test_camel_case_fields_give_snake_case_codes(self) -> None:
        extra = '[purposes."p".authorization_details.payment]\ncreditorAccount = { type = "string" }\n'
        policy = rules_policy('rule = "detail", field = "creditorAccount", in = ["X"]', extra=extra)
        assert policy.describe() == [
            ("detail[creditorAccount]", 'authorization_details field creditorAccount must be one of ["X"]')
        ]
        decision = await policy.evaluate(context(details=[{"type": "payment", "creditorAccount": "Y"}]))
        assert decision.denial is not None
        assert decision.denial.code == "creditor_account_not_allowed"


class TestSubjectBinding:
    @pytest.mark.parametrize(
        ("rule", "subject", "details", "code"),
        [
            (
                'rule = "subject_binding", field = "owner", claim = "sub"',
                {},
                [{"type": "payment", "owner": "alice"}],
                None,
            ),
            (
                'rule = "subject_binding", field = "owner", claim = "sub"',
                {},
                [{"type": "payment", "owner": "bob"}],
                "subject_binding_mismatch",
            ),
            ('rule = "subject_binding", field = "owner", claim = "sub"', {}, [], "subject_binding_mismatch"),
            # Every entry is bound, so a second entry cannot smuggle someone else's account.
            (
                'rule = "subject_binding", field = "owner", claim = "sub"',
                {},
                [{"type": "payment", "owner": "alice"}, {"type": "report", "owner": "bob"}],
                "subject_binding_mismatch",
            ),
            (
                'rule = "subject_binding", field = "owner", claim = "org.tenant"',
                {"org": {"tenant": "acme"}},
                [{"type": "payment", "owner": "acme"}],
                None,
            ),
            (
                'rule = "subject_binding", field = "owner", claim = "org.tenant"',
                {},
                [{"type": "payment", "owner": "acme"}],
                "subject_binding_mismatch",
            ),
        ],
    )
    async def test_subject_binding_rule(
        self, rule: str, subject: dict[str, Any], details: list[dict[str, Any]], code: str | None
    ) -> None:
        assert await decide(rule, subject, details) == code

    @pytest.mark.parametrize(
        ("rule", "message"),
        [
            (
                'rule = "subject_binding", field = "holder", claim = "sub"',
                "field 'holder' is not declared in any accepted authorization_details type "
                "(payment: amount, currency, account, owner, count; report: owner, actions)",
            ),
            (
                'rule = "subject_binding", field = "actions", claim = "sub"',
                "field 'actions' is an array; subject_binding compares one value",
            ),
        ],
    )
    def test_bad_parameters_are_rejected_at_compile_time(self, rule: str, message: str) -> None:
        with pytest.raises(PolicyError) as caught:
            rules_policy(rule, extra=PAYMENT)
        assert caught.value.problems == [f'purposes."p".rules[0] (subject_binding): {message}']
