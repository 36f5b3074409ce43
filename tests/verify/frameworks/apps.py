"""The same tiny service written for every framework we integrate with, guarded by our integration.

Routes (all of them): GET /whoami needs a PURPOSE token and answers {"sub": ...}; POST /pay/<id> needs
one whose authorization_details cover payment <id> (checked in the handler with require_detail) and
answers {"paid": id}; GET /open needs nothing. Middleware-style integrations get the same through a
route table (/open open, everything else PURPOSE).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import django
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from fastapi import Depends, FastAPI
from flask import Flask
from litestar import Litestar, get, post
from litestar.params import FromPath
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute

from exchange.verify import PurposeTokenVerifier, VerifiedClaims
from exchange.verify.access import refused_in_handler
from exchange.verify.asgi import PurposeMiddleware
from exchange.verify.errors import VerificationError
from exchange.verify.flask import PurposeTokens, current_claims
from exchange.verify.flask import require_purpose as flask_require_purpose
from exchange.verify.litestar import PurposeClaimsDependency, PurposeTokenPlugin
from exchange.verify.litestar import require_purpose as litestar_require_purpose
from exchange.verify.routes import Route, RouteTable
from exchange.verify.starlette import install, verified_claims
from exchange.verify.starlette import require_purpose as starlette_require_purpose
from exchange.verify.wsgi import PurposeWSGIMiddleware, claims_from_environ, refusal_response
from tests.verify.conftest import PURPOSE

ROUTES = RouteTable([Route(prefix="/open", open=True), Route(prefix="/", purpose=PURPOSE)])

#: Read by the Django settings (dotted paths), set by the test before the app serves.
DJANGO_VERIFIER: PurposeTokenVerifier | None = None
DJANGO_TXN_VERIFIER: Any = None  # a TxnTokenVerifier (tests/verify/frameworks/txn_apps.py)


def asgi_middleware(verifier: PurposeTokenVerifier) -> Any:

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"sub": request.state.purpose_claims.sub})

    async def pay(request: Request) -> JSONResponse:
        payment_id = request.path_params["payment_id"]
        claims: VerifiedClaims = request.state.purpose_claims
        claims.require_detail(type="payment", payment_id=payment_id)
        return JSONResponse({"paid": payment_id})

    async def open_route(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            StarletteRoute("/whoami", whoami),
            StarletteRoute("/pay/{payment_id}", pay, methods=["POST"]),
            StarletteRoute("/open", open_route),
        ]
    )
    install(app, verifier)  # answers a require_detail refusal raised in the endpoint
    return PurposeMiddleware(app, verifier=verifier, routes=ROUTES)


def starlette_endpoints(verifier: PurposeTokenVerifier) -> Any:

    async def whoami(request: Request) -> JSONResponse:
        claims = await verified_claims(request, PURPOSE)
        return JSONResponse({"sub": claims.sub})

    async def pay(request: Request) -> JSONResponse:
        payment_id = request.path_params["payment_id"]
        claims = await verified_claims(request, PURPOSE)
        claims.require_detail(type="payment", payment_id=payment_id)
        return JSONResponse({"paid": payment_id})

    async def open_route(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            StarletteRoute("/whoami", whoami),
            StarletteRoute("/pay/{payment_id}", pay, methods=["POST"]),
            StarletteRoute("/open", open_route),
        ]
    )
    install(app, verifier)
    return app


def fastapi_dependency(verifier: PurposeTokenVerifier) -> Any:

    app = FastAPI()
    install(app, verifier)
    needs_purpose = Depends(starlette_require_purpose(PURPOSE))

    @app.get("/whoami")
    async def whoami(claims: VerifiedClaims = needs_purpose) -> dict[str, str]:
        return {"sub": claims.sub}

    @app.post("/pay/{payment_id}")
    def pay(payment_id: str, claims: VerifiedClaims = needs_purpose) -> dict[str, str]:
        claims.require_detail(type="payment", payment_id=payment_id)
        return {"paid": payment_id}

    @app.get("/open")
    async def open_route() -> dict[str, str]:
        return {"status": "ok"}

    return app


def litestar_guard(verifier: PurposeTokenVerifier) -> Any:

    @get("/whoami", guards=[litestar_require_purpose(PURPOSE)])
    async def whoami(purpose_claims: PurposeClaimsDependency) -> dict[str, str]:
        return {"sub": purpose_claims.sub}

    @post("/pay/{payment_id:str}", guards=[litestar_require_purpose(PURPOSE)], status_code=200)
    async def pay(payment_id: FromPath[str], purpose_claims: PurposeClaimsDependency) -> dict[str, str]:
        purpose_claims.require_detail(type="payment", payment_id=payment_id)
        return {"paid": payment_id}

    @get("/open")
    async def open_route() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar([whoami, pay, open_route], plugins=[PurposeTokenPlugin(verifier)])


def flask_decorator(verifier: PurposeTokenVerifier) -> Any:

    app = Flask("payments")
    PurposeTokens(app, verifier=verifier)

    @app.get("/whoami")
    @flask_require_purpose(PURPOSE)
    def whoami() -> dict[str, str]:
        return {"sub": current_claims().sub}

    @app.post("/pay/<payment_id>")
    @flask_require_purpose(PURPOSE)
    def pay(payment_id: str) -> dict[str, str]:
        current_claims().require_detail(type="payment", payment_id=payment_id)
        return {"paid": payment_id}

    @app.get("/open")
    def open_route() -> dict[str, str]:
        return {"status": "ok"}

    return app


def wsgi_middleware(verifier: PurposeTokenVerifier) -> Any:

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ["PATH_INFO"]
        claims = claims_from_environ(environ)
        if path == "/open":
            body: dict[str, str] = {"status": "ok"}
        elif path == "/whoami" and claims is not None:
            body = {"sub": claims.sub}
        elif path.startswith("/pay/") and claims is not None:
            try:
                claims.require_detail(type="payment", payment_id=path[len("/pay/") :])
            except VerificationError as exc:
                return refusal_response(refused_in_handler(exc, path), start_response)
            body = {"paid": path[len("/pay/") :]}
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    return PurposeWSGIMiddleware(app, verifier=verifier, routes=ROUTES)


def configure_django(verifier: PurposeTokenVerifier | None) -> None:
    """Django's settings, once per process (both the purpose-token and the Txn-Token variants)."""
    global DJANGO_VERIFIER
    if verifier is not None:
        DJANGO_VERIFIER = verifier
    if not settings.configured:
        from tests.verify.frameworks.txn_apps import TXN_ROUTES

        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF="tests.verify.frameworks.django_urls",
            SECRET_KEY="test-only-not-secret",
            MIDDLEWARE=[],
            PURPOSE_TOKEN_VERIFIER="tests.verify.frameworks.apps.DJANGO_VERIFIER",
            PURPOSE_TOKEN_ROUTES=ROUTES,
            TXN_TOKEN_VERIFIER="tests.verify.frameworks.apps.DJANGO_TXN_VERIFIER",
            TXN_TOKEN_ROUTES=TXN_ROUTES,
            USE_TZ=True,
        )
        django.setup()


def _django(verifier: PurposeTokenVerifier, *, middleware: bool) -> Any:
    configure_django(verifier)
    settings.MIDDLEWARE = ["exchange.verify.django.PurposeTokenMiddleware"] if middleware else []
    return WSGIHandler()  # reads MIDDLEWARE now


def django_decorator(verifier: PurposeTokenVerifier) -> Any:
    return _django(verifier, middleware=False)


def django_middleware(verifier: PurposeTokenVerifier) -> Any:
    return _django(verifier, middleware=True)


ASGI = {
    "asgi-middleware": asgi_middleware,
    "starlette": starlette_endpoints,
    "fastapi": fastapi_dependency,
    "litestar": litestar_guard,
}
WSGI = {
    "flask": flask_decorator,
    "wsgi-middleware": wsgi_middleware,
    "django-decorator": django_decorator,
    "django-middleware": django_middleware,
}
