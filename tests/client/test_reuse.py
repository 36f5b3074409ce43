"""Token reuse, against a real exchange: the audit trail counts what the exchange really granted."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from exchange.client import PurposeTokenClient
from tests.client.conftest import granted, identity
from tests.idp import FakeIdP
from tests.server import Server

ARCHIVE = "https://archive.internal"
STATEMENTS = "https://statements.internal"
ACCOUNT = {"type": "account", "number": "FR7630001007941234567890185", "period": "2026-01"}


class Clock:
    """The app's clock, moved by hand: expiry without sleeping."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(time.time())


@pytest.fixture
def teller(exchange_server: Server, clock: Clock) -> Iterator[PurposeTokenClient]:
    client = PurposeTokenClient("teller", issuer=exchange_server.url, clock=clock)
    yield client
    client.close()


def test_the_same_request_is_answered_from_the_cache(
    teller: PurposeTokenClient, idp: FakeIdP, exchange_server: Server
) -> None:
    subject = identity(idp, sub="reuse-same")
    first = teller.get("statement.read", subject, audience=ARCHIVE, authorization_details=[ACCOUNT])
    again = teller.get("statement.read", subject, audience=ARCHIVE, authorization_details=[ACCOUNT])
    assert again is first
    assert granted(exchange_server, "reuse-same", "statement.read") == 1


async def test_async_and_sync_calls_share_the_cache(
    exchange_server: Server, idp: FakeIdP, clock: Clock
) -> None:
    client = PurposeTokenClient("teller", issuer=exchange_server.url, clock=clock)
    subject = identity(idp, sub="reuse-async")
    first = await client.aget("statement.read", subject, audience=ARCHIVE)
    assert await client.aget("statement.read", subject, audience=ARCHIVE) is first
    await client.aclose()
    assert granted(exchange_server, "reuse-async", "statement.read") == 1


def test_details_in_another_key_order_are_the_same_request(teller: PurposeTokenClient, idp: FakeIdP) -> None:
    subject = identity(idp)
    first = teller.get("statement.read", subject, audience=ARCHIVE, authorization_details=[ACCOUNT])
    shuffled = dict(reversed(list(ACCOUNT.items())))
    assert teller.get("statement.read", subject, audience=ARCHIVE, authorization_details=[shuffled]) is first


@pytest.mark.parametrize(
    "change",
    ["subject", "audience", "details", "no details"],
)
def test_any_other_request_gets_its_own_token(
    teller: PurposeTokenClient, idp: FakeIdP, exchange_server: Server, change: str
) -> None:
    sub = f"reuse-differs-{change.replace(' ', '-')}"
    subject = identity(idp, sub=sub)
    first = teller.get("statement.read", subject, audience=ARCHIVE, authorization_details=[ACCOUNT])
    args: dict[str, object] = {"audience": ARCHIVE, "authorization_details": [ACCOUNT]}
    if change == "subject":
        subject = identity(idp, sub=sub)  # the same user, another identity token
    elif change == "audience":
        args["audience"] = STATEMENTS
    elif change == "details":
        args["authorization_details"] = [{**ACCOUNT, "period": "2026-02"}]
    else:
        args["authorization_details"] = None
    second = teller.get("statement.read", subject, **args)  # type: ignore[arg-type]
    assert second.jti != first.jti
    assert granted(exchange_server, sub, "statement.read") == 2


def test_a_single_use_token_is_never_handed_out_twice(
    teller: PurposeTokenClient, idp: FakeIdP, exchange_server: Server
) -> None:
    subject = identity(idp, sub="reuse-single")
    payment = [{"type": "payment", "payment_id": "p-7", "amount": 10}]
    first = teller.get("transfer.approve", subject, authorization_details=payment)
    second = teller.get("transfer.approve", subject, authorization_details=payment)
    assert first.single_use and second.single_use
    assert first.jti != second.jti
    assert granted(exchange_server, "reuse-single", "transfer.approve") == 2


def test_a_token_close_to_expiry_is_not_reused(
    teller: PurposeTokenClient, idp: FakeIdP, clock: Clock
) -> None:
    subject = identity(idp)
    first = teller.get("statement.read", subject, audience=ARCHIVE)
    # 120 s lifetime, 10 s margin: reused at 109 s, not at 110 s.
    clock.now = first.expires_at - 11
    assert teller.get("statement.read", subject, audience=ARCHIVE) is first
    clock.now = first.expires_at - 10
    assert teller.get("statement.read", subject, audience=ARCHIVE).jti != first.jti


def test_the_cache_is_bounded_and_forgets_the_least_recently_used(
    exchange_server: Server, idp: FakeIdP, clock: Clock
) -> None:
    client = PurposeTokenClient("teller", issuer=exchange_server.url, clock=clock, cache_size=2)
    a, b, c = identity(idp), identity(idp), identity(idp)
    token_a = client.get("statement.read", a, audience=ARCHIVE)
    token_b = client.get("statement.read", b, audience=ARCHIVE)
    assert client.get("statement.read", a, audience=ARCHIVE) is token_a  # a is now the most recent
    client.get("statement.read", c, audience=ARCHIVE)  # evicts b
    assert client.get("statement.read", a, audience=ARCHIVE) is token_a
    assert client.get("statement.read", b, audience=ARCHIVE).jti != token_b.jti
    client.close()


def test_cache_size_zero_never_reuses(exchange_server: Server, idp: FakeIdP) -> None:
    client = PurposeTokenClient("teller", issuer=exchange_server.url, cache_size=0)
    subject = identity(idp)
    first = client.get("statement.read", subject, audience=ARCHIVE)
    assert client.get("statement.read", subject, audience=ARCHIVE).jti != first.jti
    client.close()


def test_the_cache_is_keyed_by_hashes_never_by_the_subject_token(
    teller: PurposeTokenClient, idp: FakeIdP
) -> None:
    subject = identity(idp)
    teller.get("statement.read", subject, audience=ARCHIVE)
    cache = teller._cache  # white box: what the process keeps in memory
    assert len(cache) == 1
    (key,) = cache._entries
    assert isinstance(key, bytes) and len(key) == 32
    assert subject.encode() not in key and subject not in repr(cache._entries)
    # The remembered token is a purpose token, and nothing in it refers to the identity token.
    (token,) = cache._entries.values()
    assert subject not in repr(token) and subject != token.access_token


def test_granted_details_are_read_only(teller: PurposeTokenClient, idp: FakeIdP) -> None:
    token = teller.get("statement.read", identity(idp), audience=ARCHIVE, authorization_details=[ACCOUNT])
    with pytest.raises(TypeError):
        token.authorization_details[0]["number"] = "someone else's"  # type: ignore[index]
