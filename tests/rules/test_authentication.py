"""mfa, acr, max_auth_age: denials are RFC 9470 step-up answers the client can act on."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from rules import Denial, PolicyError
from tests.rules.conftest import FRIDAY_1430_PARIS, context, rules_policy

NOW = FRIDAY_1430_PARIS
STEP_UP = "insufficient_user_authentication"
ORDER = 'order = ["urn:acr:pwd", "urn:acr:2fa", "urn:acr:hwk"]'


async def denial(rule: str, subject: dict[str, Any]) -> Denial | None:
    return (await rules_policy(rule).evaluate(context(subject, now=NOW))).denial


class TestMfa:
    @pytest.mark.parametrize(
        ("rule", "amr"),
        [
            ('rule = "mfa"', ["pwd", "otp"]),
            ('rule = "mfa"', ["hwk"]),
            ('rule = "mfa"', ["mfa"]),
            ('rule = "mfa", methods = ["hwk"]', ["pwd", "hwk"]),
        ],
    )
    async def test_a_multi_factor_login_is_allowed(self, rule: str, amr: list[str]) -> None:
        assert await denial(rule, {"amr": amr}) is None

    @pytest.mark.parametrize(
        ("rule", "subject"),
        [
            ('rule = "mfa"', {"amr": ["pwd"]}),
            ('rule = "mfa"', {}),
            # A string is not a list of methods: "mfa" as a bare string is a malformed claim.
            ('rule = "mfa"', {"amr": "mfa"}),
            ('rule = "mfa", methods = ["hwk"]', {"amr": ["otp"]}),
        ],
    )
    async def test_a_single_factor_login_gets_a_step_up_answer(
        self, rule: str, subject: dict[str, Any]
    ) -> None:
        assert await denial(rule, subject) == Denial(
            code="mfa_required", description="multi-factor authentication is required", error=STEP_UP
        )

    async def test_the_step_up_answer_carries_the_configured_acr_hint(self) -> None:
        found = await denial('rule = "mfa", acr_values = "urn:acr:2fa"', {"amr": ["pwd"]})
        assert found is not None
        assert (found.error, found.acr_values, found.max_age) == (STEP_UP, "urn:acr:2fa", None)


class TestAcr:
    @pytest.mark.parametrize("acr", ["urn:acr:2fa", "urn:acr:hwk"])
    async def test_at_least_the_level_is_allowed(self, acr: str) -> None:
        assert await denial(f'rule = "acr", at_least = "urn:acr:2fa", {ORDER}', {"acr": acr}) is None

    @pytest.mark.parametrize(
        "subject", [{"acr": "urn:acr:pwd"}, {"acr": "urn:acr:unknown"}, {}, {"acr": 2}], ids=repr
    )
    async def test_a_weaker_or_unknown_level_gets_a_step_up_answer(self, subject: dict[str, Any]) -> None:
        assert await denial(f'rule = "acr", at_least = "urn:acr:2fa", {ORDER}', subject) == Denial(
            code="acr_too_low",
            description="an authentication level of at least urn:acr:2fa is required",
            error=STEP_UP,
            acr_values="urn:acr:2fa urn:acr:hwk",
        )

    @pytest.mark.parametrize(
        ("rule", "message"),
        [
            (
                f'rule = "acr", at_least = "urn:acr:3fa", {ORDER}',
                "at_least 'urn:acr:3fa' is not one of order ['urn:acr:pwd', 'urn:acr:2fa', 'urn:acr:hwk']",
            ),
            ('rule = "acr", at_least = "a", order = ["a", "b", "a"]', "order lists a level twice"),
        ],
    )
    def test_bad_parameters_are_rejected_at_compile_time(self, rule: str, message: str) -> None:
        with pytest.raises(PolicyError) as caught:
            rules_policy(rule)
        assert caught.value.problems == [f'purposes."p".rules[0] (acr): {message}']


class TestMaxAuthAge:
    @pytest.mark.parametrize("age", [0, 299, 300])
    async def test_a_recent_login_is_allowed(self, age: int) -> None:
        assert await denial('rule = "max_auth_age", seconds = 300', {"auth_time": int(NOW) - age}) is None

    @pytest.mark.parametrize(
        "subject",
        [
            {"auth_time": int(NOW) - 301},
            {},
            {"auth_time": "1795786200"},
            {"auth_time": True},
            # Far in the future is a broken claim, not a fresh login.
            {"auth_time": int(NOW) + 3600},
        ],
        ids=repr,
    )
    async def test_an_old_or_unknown_login_gets_a_step_up_answer_with_max_age(
        self, subject: dict[str, Any]
    ) -> None:
        assert await denial('rule = "max_auth_age", seconds = 300', subject) == Denial(
            code="auth_too_old",
            description="a login within the last 300 seconds is required",
            error=STEP_UP,
            max_age=300,
        )

    def test_seconds_must_be_positive(self) -> None:
        with pytest.raises(
            msgspec.ValidationError, match=r"Expected `int` >= 1 - at `\$.purposes\[...\].rules\[0\].seconds`"
        ):
            rules_policy('rule = "max_auth_age", seconds = 0')
