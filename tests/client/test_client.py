"""`exchange.client` against a real `exchange serve`: tokens, every error type, client authentication.

Each behaviour runs through both `get` (in a worker thread, as a sync app would call it) and `aget`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from joserfc.jwk import import_key

from exchange.client import (
    ClientAuthFailed,
    ClientSecretBasic,
    ClientSecretPost,
    InvalidRequest,
    PrivateKeyJWT,
    PurposeDenied,
    PurposeTokenClient,
    PurposeTokenError,
    RateLimited,
    Retry,
    StepUpRequired,
    Unavailable,
)
from exchange.verify.compact import b64url_decode
from tests.client.conftest import ODD_SECRET, PAYMENTS, identity
from tests.conftest import CLIENT_SECRET
from tests.idp import FakeIdP, load_key
from tests.server import Server, free_port

Obtain = Callable[..., Awaitable[Any]]
PAYMENT = {"type": "payment", "payment_id": "p-1", "amount": 250}


@pytest.fixture(params=["sync", "async"])
def obtain(request: pytest.FixtureRequest) -> Obtain:
    """Call `get` or `aget` with the same arguments."""

    async def call(client: PurposeTokenClient, *args: Any, **kwargs: Any) -> Any:
        if request.param == "sync":
            return await asyncio.to_thread(client.get, *args, **kwargs)
        return await client.aget(*args, **kwargs)

    return call


@pytest.fixture
async def teller(exchange_server: Server) -> AsyncIterator[PurposeTokenClient]:
    client = PurposeTokenClient("teller", issuer=exchange_server.url)
    yield client
    client.close()
    await client.aclose()


def payload(token: str) -> dict[str, Any]:
    return dict(json.loads(b64url_decode(token.split(".")[1].encode())))


class TestTokens:
    async def test_a_granted_token_carries_its_purpose_audience_expiry_and_details(
        self, teller: PurposeTokenClient, idp: FakeIdP, obtain: Obtain
    ) -> None:
        token = await obtain(teller, "transfer.approve", identity(idp), authorization_details=[PAYMENT])
        assert token.purpose == "transfer.approve"
        assert token.audience == PAYMENTS
        assert 50 < token.expires_in() <= 60
        assert [dict(d) for d in token.authorization_details] == [PAYMENT]
        assert token.single_use is True
        claims = payload(token.access_token)
        assert claims["jti"] == token.jti and claims["client_id"] == "teller"
        assert token.authorization == f"Bearer {token.access_token}"

    async def test_the_token_endpoint_is_discovered_once(self, exchange_server: Server, idp: FakeIdP) -> None:
        seen: list[str] = []
        http = httpx.AsyncClient(event_hooks={"request": [lambda r: _note(seen, r)]})
        client = PurposeTokenClient("teller", issuer=exchange_server.url, async_http_client=http)
        try:
            for _ in range(2):
                await client.aget("transfer.approve", identity(idp), authorization_details=[PAYMENT])
        finally:
            await http.aclose()
        assert seen == [
            "GET /.well-known/oauth-authorization-server",
            "POST /token",
            "POST /token",
        ]

    async def test_an_explicit_token_endpoint_is_used_without_discovery(
        self, exchange_server: Server, idp: FakeIdP, obtain: Obtain
    ) -> None:
        client = PurposeTokenClient("teller", token_endpoint=f"{exchange_server.url}/token")
        token = await obtain(client, "statement.read", identity(idp), audience="https://archive.internal")
        client.close()
        await client.aclose()
        assert token.audience == "https://archive.internal"

    async def test_metadata_naming_another_issuer_is_refused(
        self, exchange_server: Server, idp: FakeIdP, obtain: Obtain
    ) -> None:
        # Same server, other spelling: its metadata says 127.0.0.1, so it is not this issuer's.
        client = PurposeTokenClient("teller", issuer=exchange_server.url.replace("127.0.0.1", "localhost"))
        with pytest.raises(InvalidRequest) as caught:
            await obtain(client, "statement.read", identity(idp), audience="https://archive.internal")
        client.close()
        await client.aclose()
        assert caught.value.error == "invalid_response"
        assert "another issuer" in str(caught.value)

    def test_plain_http_to_a_non_loopback_host_is_refused_before_any_request(self) -> None:
        with pytest.raises(ValueError, match="https"):
            PurposeTokenClient("teller", issuer="http://exchange.example")
        with pytest.raises(ValueError, match="https"):
            PurposeTokenClient("teller", token_endpoint="http://exchange.example/token")


class TestErrors:
    async def test_a_login_without_mfa_asks_for_step_up_with_the_acr_values(
        self, teller: PurposeTokenClient, idp: FakeIdP, obtain: Obtain, exchange_server: Server
    ) -> None:
        with pytest.raises(StepUpRequired) as caught:
            await obtain(
                teller, "transfer.approve", identity(idp, amr=["pwd"]), authorization_details=[PAYMENT]
            )
        step_up = caught.value
        assert (step_up.error, step_up.denial) == ("insufficient_user_authentication", "mfa_required")
        assert (step_up.acr_values, step_up.max_age) == ("urn:acr:2fa", None)
        assert step_up.request_id is not None
        assert exchange_server.audit(step_up.request_id)["denial"] == "mfa_required"

    async def test_an_old_login_asks_for_step_up_with_max_age(
        self, teller: PurposeTokenClient, idp: FakeIdP, obtain: Obtain
    ) -> None:
        old = identity(idp, auth_time=int(time.time()) - 1000)
        with pytest.raises(StepUpRequired) as caught:
            await obtain(teller, "transfer.approve", old, authorization_details=[PAYMENT])
        assert (caught.value.denial, caught.value.max_age, caught.value.acr_values) == (
            "auth_too_old",
            300,
            None,
        )

    async def test_a_business_rule_denial_says_which_rule_and_why(
        self, teller: PurposeTokenClient, idp: FakeIdP, obtain: Obtain
    ) -> None:
        big = {**PAYMENT, "amount": 5000}
        with pytest.raises(PurposeDenied) as caught:
            await obtain(teller, "transfer.approve", identity(idp), authorization_details=[big])
        assert caught.value.denial == "amount_too_high"
        assert caught.value.description == "amount must be at most 1000"
        assert caught.value.status == 400

    async def test_a_rate_limit_denial_is_rate_limited(
        self, teller: PurposeTokenClient, idp: FakeIdP, obtain: Obtain
    ) -> None:
        sub = f"busy-{id(obtain)}"
        await obtain(teller, "report.once", identity(idp, sub=sub))
        # Another identity token for the same user: not a reuse, a second grant, over the limit.
        with pytest.raises(RateLimited) as caught:
            await obtain(teller, "report.once", identity(idp, sub=sub))
        limited = caught.value
        assert limited.denial == "rate_limited"
        # 400 until the exchange answers rate limits with 429 + Retry-After (RFC 6585).
        assert limited.status in (400, 429)
        if limited.status == 429:
            assert limited.retry_after is not None and limited.retry_after > 0

    async def test_a_wrong_secret_is_client_auth_failed(
        self, exchange_server: Server, idp: FakeIdP, obtain: Obtain
    ) -> None:
        client = PurposeTokenClient("vault", issuer=exchange_server.url, auth=ClientSecretBasic("wrong"))
        with pytest.raises(ClientAuthFailed) as caught:
            await obtain(
                client, "statement.read", identity(idp, "vault"), audience="https://archive.internal"
            )
        client.close()
        await client.aclose()
        assert (caught.value.error, caught.value.status) == ("invalid_client", 401)

    async def test_an_unknown_client_is_client_auth_failed(
        self, exchange_server: Server, idp: FakeIdP, obtain: Obtain
    ) -> None:
        client = PurposeTokenClient("nobody", issuer=exchange_server.url)
        with pytest.raises(ClientAuthFailed):
            await obtain(
                client, "statement.read", identity(idp, "nobody"), audience="https://archive.internal"
            )
        client.close()
        await client.aclose()

    @pytest.mark.parametrize(
        ("purpose", "kwargs", "error", "denial"),
        [
            ("no.such.purpose", {}, "invalid_scope", None),
            ("customer.export", {"audience": "https://crm.internal"}, "unauthorized_client", None),
            ("statement.read", {}, "invalid_target", None),
            (
                "statement.read",
                {"audience": "https://archive.internal", "authorization_details": [{"type": "account"}]},
                "invalid_authorization_details",
                "detail_field_missing",
            ),
        ],
    )
    async def test_a_request_the_exchange_cannot_serve_is_invalid_request(
        self,
        teller: PurposeTokenClient,
        idp: FakeIdP,
        obtain: Obtain,
        purpose: str,
        kwargs: dict[str, Any],
        error: str,
        denial: str | None,
    ) -> None:
        with pytest.raises(InvalidRequest) as caught:
            await obtain(teller, purpose, identity(idp), **kwargs)
        assert (caught.value.error, caught.value.denial) == (error, denial)

    async def test_an_unacceptable_identity_token_is_invalid_request(
        self, teller: PurposeTokenClient, idp_ec: FakeIdP, obtain: Obtain
    ) -> None:
        expired = identity(idp_ec, exp=1_000_000_000)
        with pytest.raises(InvalidRequest) as caught:
            await obtain(teller, "statement.read", expired, audience="https://archive.internal")
        assert caught.value.description == "subject_token is invalid"

    async def test_no_exchange_listening_is_unavailable_after_bounded_retries(
        self, idp: FakeIdP, obtain: Obtain
    ) -> None:
        waits: list[float] = []

        async def note(delay: float) -> None:
            waits.append(delay)

        client = PurposeTokenClient(
            "teller",
            token_endpoint=f"http://127.0.0.1:{free_port()}/token",
            retry=Retry(attempts=4, base_delay=0.01, max_delay=0.04),
            sleep=waits.append,
            async_sleep=note,
        )
        with pytest.raises(Unavailable) as caught:
            await obtain(client, "statement.read", identity(idp))
        client.close()
        await client.aclose()
        assert (caught.value.error, caught.value.attempts) == ("unreachable", 4)
        # Three waits between four attempts, each within its jittered, capped bound.
        assert len(waits) == 3
        for n, wait in enumerate(waits, start=1):
            ceiling = min(0.04, 0.01 * 2 ** (n - 1))
            assert ceiling / 2 <= wait <= ceiling

    def test_every_error_type_shares_one_base(self) -> None:
        for kind in (
            StepUpRequired,
            PurposeDenied,
            RateLimited,
            Unavailable,
            ClientAuthFailed,
            InvalidRequest,
        ):
            assert issubclass(kind, PurposeTokenError)


class TestClientAuthentication:
    async def test_basic_form_encodes_an_awkward_secret(
        self, exchange_server: Server, idp: FakeIdP, obtain: Obtain
    ) -> None:
        client = PurposeTokenClient("vault", issuer=exchange_server.url, auth=ClientSecretBasic(ODD_SECRET))
        token = await obtain(
            client, "statement.read", identity(idp, "vault"), audience="https://archive.internal"
        )
        client.close()
        await client.aclose()
        assert payload(token.access_token)["client_id"] == "vault"

    async def test_client_secret_post(self, exchange_server: Server, idp: FakeIdP, obtain: Obtain) -> None:
        client = PurposeTokenClient("batch", issuer=exchange_server.url, auth=ClientSecretPost(CLIENT_SECRET))
        token = await obtain(
            client, "customer.export", identity(idp, "batch"), audience="https://crm.internal"
        )
        client.close()
        await client.aclose()
        assert payload(token.access_token)["client_id"] == "batch"

    async def test_private_key_jwt_signs_a_fresh_assertion_for_every_request(
        self, exchange_server: Server, idp: FakeIdP, obtain: Obtain
    ) -> None:
        assertions: list[str] = []

        def capture(request: httpx.Request) -> None:
            form = parse_qs(request.content.decode())
            assertions.extend(form.get("client_assertion", []))

        http = httpx.Client(event_hooks={"request": [capture]})
        ahttp = httpx.AsyncClient(event_hooks={"request": [_async(capture)]})
        auth = PrivateKeyJWT(load_key("client_ec"))
        client = PurposeTokenClient(
            "signer", issuer=exchange_server.url, auth=auth, http_client=http, async_http_client=ahttp
        )
        try:
            for _ in range(2):
                token = await obtain(
                    client, "customer.export", identity(idp, "signer"), audience="https://crm.internal"
                )
                assert payload(token.access_token)["client_id"] == "signer"
        finally:
            await asyncio.to_thread(http.close)
            await ahttp.aclose()
        claims = [payload(a) for a in assertions]
        assert len(claims) == 2 and claims[0]["jti"] != claims[1]["jti"]
        for c in claims:
            assert c["iss"] == c["sub"] == "signer"
            assert c["aud"] == f"{exchange_server.url}/token"
            assert 0 < c["exp"] - c["iat"] <= 60

    async def test_private_key_jwt_with_a_key_the_exchange_does_not_know_fails(
        self, exchange_server: Server, idp: FakeIdP, obtain: Obtain
    ) -> None:
        client = PurposeTokenClient(
            "signer", issuer=exchange_server.url, auth=PrivateKeyJWT(load_key("attacker_ec"))
        )
        with pytest.raises(ClientAuthFailed):
            await obtain(client, "customer.export", identity(idp, "signer"), audience="https://crm.internal")
        client.close()
        await client.aclose()

    def test_private_key_jwt_refuses_a_public_key_and_a_symmetric_algorithm(self) -> None:
        public = import_key({k: v for k, v in load_key("client_ec").as_dict().items() if k != "d"})
        with pytest.raises(ValueError, match="private"):
            PrivateKeyJWT(public)
        with pytest.raises(ValueError, match="asymmetric"):
            PrivateKeyJWT(load_key("client_ec"), alg="HS256")


def _note(seen: list[str], request: httpx.Request) -> Awaitable[None]:
    seen.append(f"{request.method} {request.url.path}")
    return asyncio.sleep(0)


def _async(hook: Callable[[httpx.Request], None]) -> Callable[[httpx.Request], Awaitable[None]]:
    async def run(request: httpx.Request) -> None:
        hook(request)

    return run
