"""The one mapping from an exchange's answer to a typed error, for answers a test exchange cannot be
made to give on demand (a proxy's 502 page, 429 with Retry-After as an HTTP-date) and the retry policy
that reads them."""

from __future__ import annotations

import email.utils

import pytest

from exchange.client import InvalidRequest, PurposeDenied, RateLimited, Retry, StepUpRequired, Unavailable
from exchange.client.errors import error_from_answer, retry_after_seconds


def test_a_429_with_retry_after_is_rate_limited_with_the_delay() -> None:
    body = b'{"error":"invalid_request","error_description":"rate limit reached","denial":"rate_limited"}'
    error = error_from_answer(429, {"retry-after": "30"}, body, request_id="r1")
    assert isinstance(error, RateLimited)
    assert (error.retry_after, error.denial, error.status, error.request_id) == (
        30.0,
        "rate_limited",
        429,
        "r1",
    )


def test_retry_after_may_be_an_http_date() -> None:
    later = email.utils.formatdate(1_900_000_090, usegmt=True)
    assert retry_after_seconds(later, now=1_900_000_000) == pytest.approx(90)
    assert retry_after_seconds("soon") is None


def test_a_proxy_page_instead_of_the_exchange_is_unavailable_and_retryable() -> None:
    error = error_from_answer(502, {}, b"<html>Bad Gateway</html>", request_id=None)
    assert isinstance(error, Unavailable) and error.retryable


def test_a_500_is_unavailable_but_not_retried() -> None:
    body = b'{"error":"server_error","error_description":"internal error"}'
    error = error_from_answer(500, {}, body, request_id=None)
    assert isinstance(error, Unavailable) and not error.retryable


def test_a_schema_failure_is_the_apps_bug_not_a_business_denial() -> None:
    body = b'{"error":"invalid_authorization_details","error_description":"x","denial":"unknown_detail_type"}'
    assert type(error_from_answer(400, {}, body, request_id=None)) is InvalidRequest
    body = b'{"error":"invalid_request","error_description":"too much","denial":"amount_too_high"}'
    assert type(error_from_answer(400, {}, body, request_id=None)) is PurposeDenied


def test_unknown_members_of_an_error_body_are_ignored() -> None:
    body = b'{"error":"insufficient_user_authentication","max_age":60,"future_member":{"a":1}}'
    error = error_from_answer(400, {}, body, request_id=None)
    assert isinstance(error, StepUpRequired) and error.max_age == 60


def test_a_retry_after_longer_than_the_cap_ends_the_retries_at_once() -> None:
    retry = Retry(attempts=5, base_delay=0.1, max_delay=2.0)
    long_wait = Unavailable("temporarily_unavailable", retry_after=30.0)
    assert retry.delay(long_wait, 1) is None
    short_wait = Unavailable("temporarily_unavailable", retry_after=1.5)
    delay = retry.delay(short_wait, 1)
    assert delay is not None and delay >= 1.5
    assert retry.delay(Unavailable("temporarily_unavailable"), 5) is None  # attempts used up
