"""examples/payments_service stays working: its app, driven with tokens minted here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from joserfc.jwk import Key
from litestar.testing import AsyncTestClient

from exchange.verify import PurposeTokenVerifier
from tests.verify.conftest import ISSUER, NOW, base_claims, mint, public_jwks

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "payments_service" / "app.py"
AUDIENCE = "https://payments.internal"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("payments_service_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Litestar resolves handler annotations through sys.modules[handler.__module__].
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def app(example: ModuleType, ec_key: Key) -> Any:
    verifier = PurposeTokenVerifier(
        issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key), clock=lambda: NOW
    )
    return example.create_app(verifier)


def auth(key: Key, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(key, base_claims(aud=AUDIENCE, **claims))}"}


async def test_approve_with_a_payments_approve_token(app: Any, ec_key: Key) -> None:
    async with AsyncTestClient(app) as client:
        response = await client.post("/payments/p-1001/approve", headers=auth(ec_key))
    assert response.status_code == 201
    assert response.json()["approved_by"] == "alice"


async def test_read_token_cannot_approve_but_can_read(app: Any, ec_key: Key) -> None:
    async with AsyncTestClient(app) as client:
        approve = await client.post("/payments/p-1001/approve", headers=auth(ec_key, scope="payments.read"))
        read = await client.get("/payments/p-1001", headers=auth(ec_key, scope="payments.read"))
    assert approve.status_code == 403
    assert read.json()["amount"] == "250.00"


async def test_details_for_another_payment_are_refused(app: Any, ec_key: Key) -> None:
    details = [{"type": "payment", "payment_id": "p-9999"}]
    async with AsyncTestClient(app) as client:
        response = await client.post(
            "/payments/p-1001/approve", headers=auth(ec_key, authorization_details=details)
        )
    assert response.status_code == 403


async def test_health_is_open_and_the_rest_is_not(app: Any) -> None:
    async with AsyncTestClient(app) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/payments/p-1001")).status_code == 401


def test_env_factory_builds(example: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENTS_JWKS_URI", "http://exchange:8080/.well-known/jwks.json")
    monkeypatch.setenv("PAYMENTS_JWKS_ALLOW_HTTP", "1")
    assert example.app_from_env() is not None


class TestFlaskVariant:
    """examples/payments_service/flask_app.py: the same service under Flask, keys fetched by verify()."""

    @pytest.fixture
    def flask_app(self, jwks_server: Any, ec_key: Key) -> Any:
        jwks_server.publish(ec_key)
        spec = importlib.util.spec_from_file_location(
            "payments_flask_example", EXAMPLE.with_name("flask_app.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        verifier = PurposeTokenVerifier(
            issuer=ISSUER, audience=AUDIENCE, jwks_uri=jwks_server.url, clock=lambda: NOW
        )
        return module.create_app(verifier).test_client()

    def test_approve_read_and_refuse(self, flask_app: Any, ec_key: Key) -> None:
        approve = flask_app.post("/payments/p-1001/approve", headers=auth(ec_key))
        assert (approve.status_code, approve.json["approved_by"]) == (200, "alice")
        read = flask_app.get("/payments/p-1001", headers=auth(ec_key, scope="payments.read"))
        assert read.status_code == 200
        refused = flask_app.post("/payments/p-1001/approve", headers=auth(ec_key, scope="payments.read"))
        assert (refused.status_code, refused.json) == (403, {"error": "insufficient_scope"})
        other = [{"type": "payment", "payment_id": "p-1002"}]
        wrong = flask_app.post("/payments/p-1001/approve", headers=auth(ec_key, authorization_details=other))
        assert wrong.status_code == 403
        assert flask_app.get("/payments/p-1001").headers["WWW-Authenticate"] == "Bearer"
