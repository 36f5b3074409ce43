"""The same tiny service inside a trust domain, for every framework, guarded by our Txn-Token integration.

Routes: GET /order needs a Txn-Token of TXN_SCOPE; GET /any needs one of any scope; GET /open needs
nothing. Both guarded routes answer what the service sees: {"txn", "req_wl", "tctx", "rctx", "scope",
"forward"}, `forward` being the Txn-Token header the service would send on (draft §12.2: unmodified).
Middleware-style integrations get the same through TXN_ROUTES.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from fastapi import Depends, FastAPI
from flask import Flask
from litestar import Litestar, get
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute

from exchange.verify.asgi import TxnTokenMiddleware, txn_token_from_scope
from exchange.verify.flask import PurposeTokens, current_txn_token
from exchange.verify.flask import require_txn_token as flask_require_txn_token
from exchange.verify.litestar import PurposeTokenPlugin, TxnTokenDependency
from exchange.verify.litestar import require_txn_token as litestar_require_txn_token
from exchange.verify.routes import Route, RouteTable
from exchange.verify.starlette import install, verified_txn_token
from exchange.verify.starlette import require_txn_token as starlette_require_txn_token
from exchange.verify.txn import TxnToken, TxnTokenVerifier
from exchange.verify.wsgi import TxnTokenWSGIMiddleware, txn_token_from_environ
from tests.verify.conftest import TXN_SCOPE
from tests.verify.frameworks import apps

TXN_ROUTES = RouteTable(
    [Route(prefix="/open", open=True), Route(prefix="/order", purpose=TXN_SCOPE), Route(prefix="/")]
)


def seen(token: TxnToken) -> dict[str, Any]:
    claims = token.claims
    return {
        "txn": claims.txn,
        "req_wl": claims.req_wl,
        "tctx": claims.tctx,
        "rctx": claims.rctx,
        "scope": claims.scope,
        "forward": token.headers()["Txn-Token"],
    }


def asgi_middleware(verifier: TxnTokenVerifier) -> Any:
    async def guarded(request: Request) -> JSONResponse:
        token = txn_token_from_scope(request.scope)
        assert token is not None
        return JSONResponse(seen(token))

    async def open_route(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            StarletteRoute("/order", guarded),
            StarletteRoute("/any", guarded),
            StarletteRoute("/open", open_route),
        ]
    )
    return TxnTokenMiddleware(app, verifier=verifier, routes=TXN_ROUTES)


def starlette_endpoints(verifier: TxnTokenVerifier) -> Any:
    async def order(request: Request) -> JSONResponse:
        return JSONResponse(seen(await verified_txn_token(request, TXN_SCOPE)))

    async def any_scope(request: Request) -> JSONResponse:
        return JSONResponse(seen(await verified_txn_token(request)))

    async def open_route(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            StarletteRoute("/order", order),
            StarletteRoute("/any", any_scope),
            StarletteRoute("/open", open_route),
        ]
    )
    install(app, txn_verifier=verifier)
    return app


def fastapi_dependency(verifier: TxnTokenVerifier) -> Any:
    app = FastAPI()
    install(app, txn_verifier=verifier)

    @app.get("/order")
    async def order(txn: TxnToken = Depends(starlette_require_txn_token(TXN_SCOPE))) -> dict[str, Any]:
        return seen(txn)

    @app.get("/any")
    def any_scope(txn: TxnToken = Depends(starlette_require_txn_token())) -> dict[str, Any]:
        return seen(txn)

    @app.get("/open")
    async def open_route() -> dict[str, str]:
        return {"status": "ok"}

    return app


def litestar_guard(verifier: TxnTokenVerifier) -> Any:
    @get("/order", guards=[litestar_require_txn_token(TXN_SCOPE)])
    async def order(txn_token: TxnTokenDependency) -> dict[str, Any]:
        return seen(txn_token)

    @get("/any", guards=[litestar_require_txn_token()])
    async def any_scope(txn_token: TxnTokenDependency) -> dict[str, Any]:
        return seen(txn_token)

    @get("/open")
    async def open_route() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar([order, any_scope, open_route], plugins=[PurposeTokenPlugin(txn_verifier=verifier)])


def flask_decorator(verifier: TxnTokenVerifier) -> Any:
    app = Flask("orders")
    PurposeTokens(app, txn_verifier=verifier)

    @app.get("/order")
    @flask_require_txn_token(TXN_SCOPE)
    def order() -> dict[str, Any]:
        return seen(current_txn_token())

    @app.get("/any")
    @flask_require_txn_token()
    def any_scope() -> dict[str, Any]:
        return seen(current_txn_token())

    @app.get("/open")
    def open_route() -> dict[str, str]:
        return {"status": "ok"}

    return app


def wsgi_middleware(verifier: TxnTokenVerifier) -> Any:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        token = txn_token_from_environ(environ)
        body = seen(token) if token is not None else {"status": "ok"}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    return TxnTokenWSGIMiddleware(app, verifier=verifier, routes=TXN_ROUTES)


def _django(verifier: TxnTokenVerifier, *, middleware: bool) -> Any:
    apps.DJANGO_TXN_VERIFIER = verifier
    apps.configure_django(None)
    settings.MIDDLEWARE = ["exchange.verify.django.TxnTokenMiddleware"] if middleware else []
    return WSGIHandler()  # reads MIDDLEWARE now


def django_decorator(verifier: TxnTokenVerifier) -> Any:
    return _django(verifier, middleware=False)


def django_middleware(verifier: TxnTokenVerifier) -> Any:
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
