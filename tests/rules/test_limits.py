"""time_window (injected now, named time zone) and rate_limit (counted in the real SQLite store)."""

from __future__ import annotations

import pytest

from exchange.store import Store
from rules import PolicyError
from tests.rules.conftest import FRIDAY_1430_PARIS, context, rules_policy

HOUR = 3600.0
DAY = 24 * HOUR
WEEKDAYS_9_TO_18 = (
    'rule = "time_window", days = ["mon", "tue", "wed", "thu", "fri"], hours = "09:00-18:00", '
    'timezone = "Europe/Paris"'
)


class TestTimeWindow:
    @pytest.mark.parametrize(
        ("now", "code"),
        [
            (FRIDAY_1430_PARIS, None),
            # 08:59 and 18:00 local are outside [09:00, 18:00).
            (FRIDAY_1430_PARIS - 5 * HOUR - 31 * 60, "outside_time_window"),
            (FRIDAY_1430_PARIS - 5 * HOUR - 30 * 60, None),
            (FRIDAY_1430_PARIS + 3.5 * HOUR, "outside_time_window"),
            (FRIDAY_1430_PARIS + 3.5 * HOUR - 60, None),
            # Saturday, same time of day.
            (FRIDAY_1430_PARIS + DAY, "outside_time_window"),
            (FRIDAY_1430_PARIS + 3 * DAY, None),
        ],
    )
    async def test_days_and_hours_are_read_in_the_named_time_zone(self, now: float, code: str | None) -> None:
        decision = await rules_policy(WEEKDAYS_9_TO_18).evaluate(context(now=now))
        assert (decision.denial.code if decision.denial else None) == code

    async def test_the_same_instant_is_judged_by_the_configured_zone(self) -> None:
        # 14:30 in Paris is 08:30 in New York: before opening hours there.
        new_york = WEEKDAYS_9_TO_18.replace("Europe/Paris", "America/New_York")
        decision = await rules_policy(new_york).evaluate(context(now=FRIDAY_1430_PARIS))
        assert decision.denial is not None
        assert decision.denial.code == "outside_time_window"
        assert decision.denial.description == (
            "this purpose is available only on mon, tue, wed, thu, fri, 09:00-18:00 (America/New_York)"
        )

    @pytest.mark.parametrize(
        ("offset", "allowed"), [(7.5 * HOUR, True), (12.5 * HOUR, True), (-1 * HOUR, False)]
    )
    async def test_a_window_may_span_midnight(self, offset: float, allowed: bool) -> None:
        # 22:00-06:00 Paris; 14:30 + 7.5 h = 22:00, + 12.5 h = 03:00, - 1 h = 13:30.
        policy = rules_policy('rule = "time_window", hours = "22:00-06:00", timezone = "Europe/Paris"')
        assert (await policy.evaluate(context(now=FRIDAY_1430_PARIS + offset))).allowed is allowed

    @pytest.mark.parametrize(
        ("rule", "message"),
        [
            (
                'rule = "time_window", timezone = "Mars/Olympus"',
                "timezone 'Mars/Olympus' is not a known IANA time zone (e.g. Europe/Paris)",
            ),
            (
                'rule = "time_window", timezone = "../../etc/passwd"',
                "timezone '../../etc/passwd' is not a known IANA time zone (e.g. Europe/Paris)",
            ),
            (
                'rule = "time_window", hours = "09:00-25:00"',
                "hours: '25:00' is not a time of day (00:00 to 23:59, or 24:00 as the end)",
            ),
            (
                'rule = "time_window", hours = "24:00-06:00"',
                "hours: '24:00' is not a time of day (00:00 to 23:59, or 24:00 as the end)",
            ),
            (
                'rule = "time_window", hours = "09:61-10:00"',
                "hours: '09:61' is not a time of day (00:00 to 23:59, or 24:00 as the end)",
            ),
            ('rule = "time_window", hours = "09:00-09:00"', "hours '09:00-09:00' is an empty window"),
        ],
    )
    def test_bad_parameters_are_rejected_at_compile_time(self, rule: str, message: str) -> None:
        with pytest.raises(PolicyError) as caught:
            rules_policy(rule)
        assert caught.value.problems == [f'purposes."p".rules[0] (time_window): {message}']


class TestRateLimit:
    async def test_at_most_max_grants_per_subject_per_window(self, store: Store) -> None:
        policy = rules_policy('rule = "rate_limit", max = 2, per = 3600')
        now = 1_800_000_000.0  # a window boundary (divisible by 3600)
        codes = [
            (d.denial.code if d.denial else None)
            for d in [await policy.evaluate(context(now=now + i, store=store)) for i in range(3)]
        ]
        assert codes == [None, None, "rate_limited"]
        # Another subject has its own count; the next window starts afresh.
        assert (await policy.evaluate(context({"sub": "bob"}, now=now, store=store))).allowed
        assert (await policy.evaluate(context(now=now + 3600, store=store))).allowed

    @pytest.mark.parametrize(("offset", "retry_after"), [(0.5, 60), (30.0, 30), (59.2, 1)])
    async def test_the_denial_says_how_long_until_the_window_resets(
        self, store: Store, offset: float, retry_after: int
    ) -> None:
        policy = rules_policy('rule = "rate_limit", max = 1, per = 60')
        start = 1_800_000_000.0  # a window boundary (divisible by 60)
        assert (await policy.evaluate(context(now=start, store=store))).allowed
        decision = await policy.evaluate(context(now=start + offset, store=store))
        assert decision.denial is not None
        assert (decision.denial.code, decision.denial.retry_after) == ("rate_limited", retry_after)

    async def test_other_denials_carry_no_retry_after(self, store: Store) -> None:
        decision = await rules_policy('rule = "mfa"').evaluate(context({"amr": ["pwd"]}, store=store))
        assert decision.denial is not None and decision.denial.retry_after is None

    async def test_the_count_is_shared_through_the_store(self, store: Store) -> None:
        # Two compiled copies of one policy stand for two replicas of the service.
        replica_a = rules_policy('rule = "rate_limit", max = 1, per = 60')
        replica_b = rules_policy('rule = "rate_limit", max = 1, per = 60')
        assert (await replica_a.evaluate(context(now=1_800_000_000.0, store=store))).allowed
        decision = await replica_b.evaluate(context(now=1_800_000_001.0, store=store))
        assert decision.denial is not None
        assert decision.denial.code == "rate_limited"
        assert (
            decision.denial.description == "rate limit reached: at most 1 tokens per subject per 60 seconds"
        )

    async def test_client_keyed_limits_count_every_subject_of_the_client(self, store: Store) -> None:
        policy = rules_policy('rule = "rate_limit", max = 1, per = 60, key = "client"')
        assert (await policy.evaluate(context({"sub": "alice"}, now=1_800_000_000.0, store=store))).allowed
        assert not (await policy.evaluate(context({"sub": "bob"}, now=1_800_000_000.0, store=store))).allowed
        other = context({"sub": "bob"}, now=1_800_000_000.0, store=store, client_id="svc-batch")
        assert (await policy.evaluate(other)).allowed

    async def test_denied_requests_are_not_counted(self, store: Store) -> None:
        # rate_limit is listed first but counts only requests every other rule accepted.
        policy = rules_policy('rule = "rate_limit", max = 1, per = 60', 'rule = "mfa"')
        denied = await policy.evaluate(context({"amr": ["pwd"]}, now=1_800_000_000.0, store=store))
        assert [(o.rule, o.outcome, o.code) for o in denied.outcomes] == [("mfa", "deny", "mfa_required")]
        assert (await policy.evaluate(context({"amr": ["otp"]}, now=1_800_000_000.0, store=store))).allowed

    async def test_a_dry_run_does_not_count(self, store: Store) -> None:
        policy = rules_policy('rule = "rate_limit", max = 1, per = 60')
        for _ in range(3):
            assert (await policy.evaluate(context(now=1_800_000_000.0, store=store, dry_run=True))).allowed
        assert (await policy.evaluate(context(now=1_800_000_000.0, store=store))).allowed

    async def test_the_store_holds_no_subject_identifier(self, store: Store) -> None:
        policy = rules_policy('rule = "rate_limit", max = 5, per = 60')
        check = policy.rules[0]
        key = check.counter_key(context({"sub": "alice@bank.example"}))  # type: ignore[attr-defined]
        assert key.startswith("rate_limit:")
        assert "alice" not in key

    async def test_a_store_outage_fails_closed_and_retryable(self, store: Store) -> None:
        policy = rules_policy('rule = "rate_limit", max = 5, per = 60')
        await store.close()
        decision = await policy.evaluate(context(now=1_800_000_000.0, store=store))
        assert decision.denial is not None
        # An outage is not a verdict on the request: 503 temporarily_unavailable, the client may retry.
        assert (decision.denial.code, decision.denial.error) == (
            "store_unavailable",
            "temporarily_unavailable",
        )
        assert [(o.rule, o.outcome) for o in decision.outcomes] == [("rate_limit[sub]", "error")]
