"""Answers that mean "later" say when: a rate limit is HTTP 429 with Retry-After (seconds until its
window resets), a store outage is 503 with Retry-After; bodies stay RFC 6749 JSON. On both stores."""

from __future__ import annotations

import math
import time

import httpx

from exchange.client.errors import RateLimited, error_from_answer
from tests.backends import Launcher
from tests.conftest import exchange_form

LIMITED = """
[[clients]]
client_id = "limited"
tokens_issued_to = ["purpose-exchange"]
purposes = ["limited.read"]

[purposes."limited.read"]
audience = "https://limited.internal"
rules = [{ rule = "rate_limit", max = 2, per = 3600, key = "client" }]
"""


async def test_rate_limit_denial_is_429_with_the_seconds_until_its_window_resets(
    launch: Launcher,
) -> None:
    server = launch.start(LIMITED)
    form = exchange_form(launch.idp.token(), client_id="limited", scope="limited.read")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        granted = [await client.post("/token", data=form) for _ in range(2)]
        assert [r.status_code for r in granted] == [200, 200]
        assert all("retry-after" not in r.headers for r in granted)
        asked = time.time()
        limited = await client.post("/token", data=form, headers={"X-Request-ID": "limited-3"})

    assert limited.status_code == 429, limited.text
    assert limited.headers["content-type"] == "application/json"
    assert limited.headers["cache-control"] == "no-store"
    assert limited.json() == {
        "error": "invalid_request",
        "error_description": "rate limit reached: at most 2 tokens per client per 3600 seconds",
        "denial": "rate_limited",
    }
    # The fixed window of 3600 s that `asked` falls in ends at the next multiple of 3600.
    window_end = (math.floor(asked / 3600) + 1) * 3600
    retry_after = limited.headers["retry-after"]
    assert retry_after.isdigit()
    assert window_end - asked - 2 <= int(retry_after) <= window_end - asked + 2
    # What the client library (issue 14) relies on: 429 + Retry-After is a RateLimited with the delay.
    failure = error_from_answer(limited.status_code, limited.headers, limited.content, request_id=None)
    assert isinstance(failure, RateLimited)
    assert failure.retry_after == int(retry_after)

    record = await launch.audit("limited-3")
    assert (record["decision"], record["error"], record["denial"]) == (
        "denied",
        "invalid_request",
        "rate_limited",
    )


async def test_other_denials_stay_400_without_retry_after(launch: Launcher) -> None:
    server = launch.start()
    weak = launch.idp.token(amr=["pwd"])
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        denied = await client.post("/token", data=exchange_form(weak))
    assert denied.status_code == 400
    assert denied.json()["denial"] == "claim_mismatch"
    assert "retry-after" not in denied.headers
