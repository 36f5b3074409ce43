"""PurposeMiddleware around a raw ASGI app, driven through httpx's ASGI transport."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from joserfc.jwk import Key

from exchange.verify import PurposeTokenVerifier
from exchange.verify.asgi import PurposeMiddleware, Receive, Scope, Send, claims_from_scope
from exchange.verify.routes import Route, RouteTable
from tests.verify.conftest import AUDIENCE, ISSUER, NOW, PURPOSE, base_claims, mint, public_jwks


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with who the middleware said the caller is."""
    claims = claims_from_scope(scope)
    body = json.dumps({"sub": claims.sub if claims else None, "path": scope["path"]}).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service.test")


@pytest.fixture
def verifier(ec_key: Key) -> PurposeTokenVerifier:
    # The wall clock is pinned to NOW so minted tokens are current.
    return PurposeTokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key), clock=lambda: NOW)


class TestSinglePurpose:
    async def test_valid_token_reaches_the_app_with_claims(
        self, verifier: PurposeTokenVerifier, ec_key: Key
    ) -> None:
        async with client_for(PurposeMiddleware(echo_app, verifier=verifier, purpose=PURPOSE)) as client:
            response = await client.get("/anything", headers={"Authorization": f"Bearer {mint(ec_key)}"})
        assert response.status_code == 200
        assert response.json() == {"sub": "alice", "path": "/anything"}

    async def test_missing_token_is_401_without_error_code(self, verifier: PurposeTokenVerifier) -> None:
        async with client_for(PurposeMiddleware(echo_app, verifier=verifier, purpose=PURPOSE)) as client:
            response = await client.get("/")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"

    async def test_invalid_token_is_401_invalid_token(
        self, verifier: PurposeTokenVerifier, ec_key: Key
    ) -> None:
        expired = mint(ec_key, base_claims(iat=NOW - 200, exp=NOW - 100))
        async with client_for(PurposeMiddleware(echo_app, verifier=verifier, purpose=PURPOSE)) as client:
            response = await client.get("/", headers={"Authorization": f"Bearer {expired}"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert response.json() == {"error": "invalid_token"}

    async def test_token_of_another_purpose_is_403_insufficient_scope(
        self, verifier: PurposeTokenVerifier, ec_key: Key
    ) -> None:
        token = mint(ec_key, base_claims(scope="payments.refund"))
        async with client_for(PurposeMiddleware(echo_app, verifier=verifier, purpose=PURPOSE)) as client:
            response = await client.get("/", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 403
        assert response.headers["www-authenticate"] == f'Bearer error="insufficient_scope", scope="{PURPOSE}"'

    @pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "bearer"])
    async def test_other_schemes_and_broken_headers_count_as_no_token(
        self, verifier: PurposeTokenVerifier, header: str
    ) -> None:
        async with client_for(PurposeMiddleware(echo_app, verifier=verifier, purpose=PURPOSE)) as client:
            response = await client.get("/", headers={"Authorization": header})
        assert (response.status_code, response.headers["www-authenticate"]) == (401, "Bearer")

    async def test_lowercase_scheme_is_accepted(self, verifier: PurposeTokenVerifier, ec_key: Key) -> None:
        async with client_for(PurposeMiddleware(echo_app, verifier=verifier, purpose=PURPOSE)) as client:
            response = await client.get("/", headers={"Authorization": f"bearer {mint(ec_key)}"})
        assert response.status_code == 200

    async def test_single_use_token_replayed_is_401(
        self, verifier: PurposeTokenVerifier, ec_key: Key
    ) -> None:
        token = mint(ec_key, base_claims(single_use=True))
        async with client_for(PurposeMiddleware(echo_app, verifier=verifier, purpose=PURPOSE)) as client:
            first = await client.post("/", headers={"Authorization": f"Bearer {token}"})
            second = await client.post("/", headers={"Authorization": f"Bearer {token}"})
        assert (first.status_code, second.status_code) == (200, 401)

    async def test_lifespan_passes_through(self, verifier: PurposeTokenVerifier) -> None:
        seen: list[str] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(scope["type"])

        await PurposeMiddleware(app, verifier=verifier, purpose=PURPOSE)({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
        assert seen == ["lifespan"]

    async def test_websocket_without_token_is_closed_with_policy_violation(
        self, verifier: PurposeTokenVerifier
    ) -> None:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        middleware = PurposeMiddleware(echo_app, verifier=verifier, purpose=PURPOSE)
        await middleware({"type": "websocket", "path": "/ws", "headers": []}, None, send)  # type: ignore[arg-type]
        assert sent == [{"type": "websocket.close", "code": 1008}]


class TestRouteTable:
    @pytest.fixture
    def app(self, verifier: PurposeTokenVerifier) -> PurposeMiddleware:
        routes = RouteTable(
            [
                Route(prefix="/health", open=True),
                Route(prefix="/payments/", methods=frozenset({"POST"}), purpose=PURPOSE),
                Route(prefix="/payments/", methods=frozenset({"GET"})),
            ]
        )
        return PurposeMiddleware(echo_app, verifier=verifier, routes=routes)

    async def test_open_route_needs_no_token(self, app: PurposeMiddleware) -> None:
        async with client_for(app) as client:
            response = await client.get("/health")
        assert response.json() == {"sub": None, "path": "/health"}

    async def test_prefix_matching_is_segment_aware(self, app: PurposeMiddleware) -> None:
        async with client_for(app) as client:
            assert (await client.get("/healthz")).status_code == 404
            assert (await client.get("/health/deep")).status_code == 200

    async def test_method_selects_the_rule(self, app: PurposeMiddleware, ec_key: Key) -> None:
        read_token = mint(ec_key, base_claims(scope="payments.read"))
        async with client_for(app) as client:
            get = await client.get("/payments/1", headers={"Authorization": f"Bearer {read_token}"})
            post = await client.post("/payments/1", headers={"Authorization": f"Bearer {read_token}"})
        assert get.status_code == 200
        assert post.status_code == 403

    async def test_unmatched_request_is_refused(self, app: PurposeMiddleware, ec_key: Key) -> None:
        async with client_for(app) as client:
            response = await client.delete("/payments/1", headers={"Authorization": f"Bearer {mint(ec_key)}"})
        assert response.status_code == 404

    def test_toml_route_table(self, tmp_path: Any) -> None:
        path = tmp_path / "routes.toml"
        path.write_text(
            '[[route]]\nprefix = "/status"\nopen = true\n\n'
            '[[route]]\nmethods = ["POST"]\nprefix = "/payments/"\npurpose = "payments.approve"\n'
        )
        table = RouteTable.from_file(path)
        assert table.match("GET", "/status") == Route(prefix="/status", open=True)
        matched = table.match("POST", "/payments/7/approve")
        assert matched is not None and matched.purpose == "payments.approve"
        assert table.match("GET", "/payments/7") is None

    def test_bad_toml_route_table_names_the_file_and_key(self, tmp_path: Any) -> None:
        path = tmp_path / "routes.toml"
        path.write_text('[[route]]\nprefix = "no-slash"\n')
        with pytest.raises(ValueError, match=r"routes\.toml.*prefix"):
            RouteTable.from_file(path)


async def test_starlette_app_reads_claims_from_request_state(
    verifier: PurposeTokenVerifier, ec_key: Key
) -> None:
    starlette = pytest.importorskip("starlette.applications")
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route as StarletteRoute

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"sub": request.state.purpose_claims.sub})

    app = PurposeMiddleware(
        starlette.Starlette(routes=[StarletteRoute("/whoami", whoami)]), verifier=verifier, purpose=PURPOSE
    )
    async with client_for(app) as client:
        response = await client.get("/whoami", headers={"Authorization": f"Bearer {mint(ec_key)}"})
    assert response.json() == {"sub": "alice"}
