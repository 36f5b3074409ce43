"""SubjectTrust remembers a token that passed by its exact bytes: what the bytes decide (parse,
header, key, signature) is not done again, everything else is, and a key that went away takes the
memory with it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from joserfc.jwk import Key

from exchange.errors import SubjectTokenInvalid
from exchange.trust import SubjectTrust
from exchange.verify import StaticJWKS
from exchange.verify.jwks import JWKSCache
from schemas.config import Client, TrustedIssuer
from schemas.wire import TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN
from tests.idp import FakeIdP
from tests.test_jwks_uri import JWKSServer

ISSUER = "https://idp.memo.example"
IDP = FakeIdP(ISSUER, "idp_ec", "ES256")
OTHER_KEY = FakeIdP(ISSUER, "client_ec", "ES256")  # the same issuer after a key change
BANK = Client(client_id="bank-web")


class CountingJWKS(StaticJWKS):
    """A static key set that counts how often a key is looked up for a signature check."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        super().__init__(jwks)
        self.lookups = 0

    async def get_key(self, kid: str) -> Key:
        self.lookups += 1
        return await super().get_key(kid)


def trust_with(keys: Any, *, remember: int = 16, require_at_jwt_typ: bool = False) -> SubjectTrust:
    config = TrustedIssuer(
        issuer=ISSUER,
        audiences=["purpose-exchange"],
        algorithms=["ES256"],
        require_at_jwt_typ=require_at_jwt_typ,
    )
    return SubjectTrust([(config, keys)], max_token_bytes=8192, remember=remember)


async def test_a_repeated_token_skips_the_signature_and_nothing_else() -> None:
    keys = CountingJWKS(IDP.jwks())
    trust = trust_with(keys, require_at_jwt_typ=True)
    now = time.time()
    token = IDP.token(azp="bank-web", exp=int(now) + 60)
    first = await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=BANK, now=now)
    again = await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=BANK, now=now + 1)
    assert dict(again.claims) == dict(first.claims) and again.kid == first.kid == IDP.kid
    assert keys.lookups == 1  # the second time, the bytes were not checked again

    with pytest.raises(SubjectTokenInvalid) as expired:
        await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=BANK, now=now + 3600)
    assert expired.value.reason == "subject_token:expired"
    with pytest.raises(SubjectTokenInvalid) as elsewhere:
        await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=Client(client_id="batch"), now=now)
    assert elsewhere.value.reason == "subject_token:not_issued_to_client"
    with pytest.raises(SubjectTokenInvalid) as declared:
        await trust.validate(token, TOKEN_TYPE_ACCESS_TOKEN, presenter=BANK, now=now)
    assert declared.value.reason == "subject_token:not_an_access_token"
    assert keys.lookups == 1


async def test_a_refused_token_is_not_remembered() -> None:
    keys = CountingJWKS(IDP.jwks())
    trust = trust_with(keys)
    token = IDP.token(azp="bank-web")
    with pytest.raises(SubjectTokenInvalid):
        await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=Client(client_id="batch"))
    await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=BANK)
    assert keys.lookups == 2  # the accepted presentation was checked in full


async def test_the_memory_is_bounded_and_forgets_the_oldest_first() -> None:
    keys = CountingJWKS(IDP.jwks())
    trust = trust_with(keys, remember=3)
    tokens = [IDP.token(azp="bank-web", sub=f"user-{i}") for i in range(5)]
    for token in tokens:
        await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=BANK)
    assert keys.lookups == 5
    await trust.validate(tokens[4], TOKEN_TYPE_ID_TOKEN, presenter=BANK)  # among the last three
    assert keys.lookups == 5
    await trust.validate(tokens[0], TOKEN_TYPE_ID_TOKEN, presenter=BANK)  # forgotten
    assert keys.lookups == 6


async def test_nothing_is_remembered_with_remember_zero() -> None:
    keys = CountingJWKS(IDP.jwks())
    trust = trust_with(keys, remember=0)
    token = IDP.token(azp="bank-web")
    for _ in range(3):
        await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=BANK)
    assert keys.lookups == 3


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    srv = JWKSServer()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


async def test_a_remembered_token_is_refused_once_its_key_left_the_issuers_set(
    jwks_server: JWKSServer,
) -> None:
    clock = [1000.0]
    jwks_server.keys = IDP.jwks()["keys"]
    cache = JWKSCache(jwks_server.url, min_ttl=0, cooldown=0, clock=lambda: clock[0])
    trust = trust_with(cache)
    token = IDP.token(azp="bank-web")
    await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=BANK)
    await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=BANK)

    # The same key fetched again is a new key object: checked in full once more, still accepted.
    clock[0] += 601  # past the served max-age
    await cache.refresh()
    fetched = cache.fetch_count
    await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=BANK)

    # The issuer replaced its key: the token it signed with the old one is refused, remembered or not.
    jwks_server.keys = OTHER_KEY.jwks()["keys"]
    clock[0] += 601
    await cache.refresh()
    assert cache.fetch_count > fetched
    with pytest.raises(SubjectTokenInvalid) as gone:
        await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=BANK)
    assert gone.value.reason.startswith("subject_token:unknown_kid")
    # The new key's tokens are accepted.
    await trust.validate(OTHER_KEY.token(azp="bank-web"), TOKEN_TYPE_ID_TOKEN, presenter=BANK)


async def test_only_the_same_text_is_a_hit_a_token_one_character_apart_is_checked_in_full() -> None:
    keys = CountingJWKS(IDP.jwks())
    trust = trust_with(keys)
    token = IDP.token(azp="bank-web")
    await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=BANK)
    head, _, signature = token.rpartition(".")
    flipped = "A" if signature[0] != "A" else "B"
    with pytest.raises(SubjectTokenInvalid) as forged:
        await trust.validate(f"{head}.{flipped}{signature[1:]}", TOKEN_TYPE_ID_TOKEN, presenter=BANK)
    assert forged.value.reason == "subject_token:bad_signature"
    assert keys.lookups == 2
    await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=BANK)
    assert keys.lookups == 2


async def test_the_memo_keeps_no_bearer_token_only_a_digest_of_it() -> None:
    # A memory dump of the process must not hand out the subject tokens it has seen.
    trust = trust_with(CountingJWKS(IDP.jwks()))
    token = IDP.token(azp="bank-web")
    await trust.validate(token, TOKEN_TYPE_ID_TOKEN, presenter=BANK)
    [(key, passed)] = trust._passed.items()
    assert isinstance(key, bytes) and len(key) == 32 and token.encode() not in key
    signature = token.rpartition(".")[2]
    assert not [field for field in passed if isinstance(field, str) and signature in field]
