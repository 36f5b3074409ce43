"""The Litestar plugin and guard: RFC 6750 answers and claims handed to handlers."""

from __future__ import annotations

from typing import Any

import pytest
from joserfc.jwk import Key
from litestar import Litestar, Request, get, post
from litestar.params import FromPath
from litestar.testing import AsyncTestClient

from exchange.verify import PurposeTokenVerifier
from exchange.verify.litestar import PurposeClaimsDependency, PurposeTokenPlugin, require_purpose
from tests.verify.conftest import AUDIENCE, ISSUER, NOW, PURPOSE, base_claims, mint, public_jwks


@post("/payments/{payment_id:str}/approve", guards=[require_purpose(PURPOSE)])
async def approve(payment_id: FromPath[str], purpose_claims: PurposeClaimsDependency) -> dict[str, Any]:
    detail = purpose_claims.require_detail(type="payment", payment_id=payment_id)
    return {"approved": payment_id, "by": purpose_claims.sub, "amount": detail["amount"]}


@get("/whoami", guards=[require_purpose()])
async def whoami(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {"sub": request.state.purpose_claims.sub, "purpose": request.state.purpose_claims.purpose}


@get("/twice", guards=[require_purpose(), require_purpose(PURPOSE)])
async def twice(purpose_claims: PurposeClaimsDependency) -> dict[str, Any]:
    return {"jti": purpose_claims.jti}


@get("/open")
async def open_route() -> dict[str, str]:
    return {"status": "ok"}


@pytest.fixture
def app(ec_key: Key) -> Litestar:
    verifier = PurposeTokenVerifier(
        issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key), clock=lambda: NOW
    )
    return Litestar([approve, whoami, twice, open_route], plugins=[PurposeTokenPlugin(verifier)])


def payment_token(key: Key, **overrides: Any) -> str:
    details = [{"type": "payment", "payment_id": "p-1", "amount": 42}]
    return mint(key, base_claims(authorization_details=details, **overrides))


async def test_valid_token_reaches_the_handler_with_claims(app: Litestar, ec_key: Key) -> None:
    async with AsyncTestClient(app) as client:
        response = await client.post(
            "/payments/p-1/approve", headers={"Authorization": f"Bearer {payment_token(ec_key)}"}
        )
    assert response.status_code == 201
    assert response.json() == {"approved": "p-1", "by": "alice", "amount": 42}


async def test_missing_token_is_401_bearer(app: Litestar) -> None:
    async with AsyncTestClient(app) as client:
        response = await client.post("/payments/p-1/approve")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_bad_token_is_401_invalid_token(app: Litestar, ec_key: Key) -> None:
    token = payment_token(ec_key, aud="ledger")
    async with AsyncTestClient(app) as client:
        response = await client.post("/payments/p-1/approve", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_token_of_another_purpose_is_403_insufficient_scope(app: Litestar, ec_key: Key) -> None:
    token = payment_token(ec_key, scope="payments.read")
    async with AsyncTestClient(app) as client:
        response = await client.post("/payments/p-1/approve", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == f'Bearer error="insufficient_scope", scope="{PURPOSE}"'


async def test_detail_for_another_operation_is_403(app: Litestar, ec_key: Key) -> None:
    # The token authorizes payment p-1; using it to approve p-2 is refused by require_detail.
    async with AsyncTestClient(app) as client:
        response = await client.post(
            "/payments/p-2/approve", headers={"Authorization": f"Bearer {payment_token(ec_key)}"}
        )
    assert response.status_code == 403
    assert response.headers["www-authenticate"].startswith('Bearer error="insufficient_scope"')


async def test_guard_without_purpose_accepts_any_valid_token(app: Litestar, ec_key: Key) -> None:
    token = mint(ec_key, base_claims(scope="payments.read"))
    async with AsyncTestClient(app) as client:
        response = await client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
    assert response.json() == {"sub": "alice", "purpose": "payments.read"}


async def test_two_guards_verify_a_single_use_token_once(app: Litestar, ec_key: Key) -> None:
    token = mint(ec_key, base_claims(single_use=True))
    async with AsyncTestClient(app) as client:
        first = await client.get("/twice", headers={"Authorization": f"Bearer {token}"})
        second = await client.get("/twice", headers={"Authorization": f"Bearer {token}"})
    assert first.status_code == 200
    assert second.status_code == 401


async def test_routes_without_the_guard_stay_open(app: Litestar) -> None:
    async with AsyncTestClient(app) as client:
        assert (await client.get("/open")).json() == {"status": "ok"}
