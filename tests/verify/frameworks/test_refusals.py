"""Every integration, under its real framework and a real server, answers exactly alike.

One table of requests, run against each framework's copy of the same service (apps.py): the valid
token reaches the handler; no token is 401 `Bearer` (no error code, RFC 6750 §3.1); a bad token is 401
invalid_token; a token of another purpose, or one whose authorization_details do not cover the
operation, is 403 insufficient_scope; two Authorization headers are 400 invalid_request. The body is the
same JSON everywhere and the token's reason never leaves the service.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import uvicorn
from joserfc.jwk import Key

from exchange.verify import PurposeTokenVerifier
from tests.verify.conftest import AUDIENCE, ISSUER, NOW, base_claims, mint, public_jwks
from tests.verify.frameworks import apps


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_wsgi(app: Any) -> Iterator[int]:
    server = make_server("127.0.0.1", 0, app, _ThreadingWSGIServer, _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def serve_asgi(app: Any) -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="auto")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        threading.Event().wait(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def call(
    port: int, method: str, path: str, headers: list[tuple[str, str]] = ()
) -> tuple[int, dict[str, str], Any]:  # type: ignore[assignment]
    """One request over a real socket; `headers` may repeat a name (http.client sends both)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path)
        for name, value in headers:
            connection.putheader(name, value)
        connection.putheader("Content-Length", "0")
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        lowered = {name.lower(): value for name, value in response.getheaders()}
        return response.status, lowered, json.loads(body) if body else None
    finally:
        connection.close()


FRAMEWORKS: dict[str, tuple[Callable[[PurposeTokenVerifier], Any], Callable[[Any], Any]]] = {
    **{name: (factory, serve_asgi) for name, factory in apps.ASGI.items()},
    **{name: (factory, serve_wsgi) for name, factory in apps.WSGI.items()},
}


@pytest.fixture(scope="module", params=sorted(FRAMEWORKS))
def service(request: pytest.FixtureRequest, ec_key: Key) -> Iterator[int]:
    factory, serve = FRAMEWORKS[request.param]
    verifier = PurposeTokenVerifier(
        issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key), clock=lambda: NOW
    )
    with serve(factory(verifier)) as port:
        yield port


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


def payment_token(key: Key, payment_id: str = "p-1") -> str:
    return mint(key, base_claims(authorization_details=[{"type": "payment", "payment_id": payment_id}]))


def test_a_valid_token_reaches_the_handler(service: int, ec_key: Key) -> None:
    status, _, body = call(service, "GET", "/whoami", bearer(mint(ec_key)))
    assert (status, body) == (200, {"sub": "alice"})


def test_the_handler_sees_the_details_it_checks(service: int, ec_key: Key) -> None:
    status, _, body = call(service, "POST", "/pay/p-1", bearer(payment_token(ec_key)))
    assert (status, body) == (200, {"paid": "p-1"})


def test_no_token_is_401_with_a_bare_challenge(service: int) -> None:
    status, headers, body = call(service, "GET", "/whoami")
    assert (status, headers["www-authenticate"], body) == (401, "Bearer", {"error": "invalid_token"})
    assert headers["cache-control"] == "no-store"


def test_another_scheme_counts_as_no_token(service: int) -> None:
    status, headers, _ = call(service, "GET", "/whoami", [("Authorization", "Basic dXNlcjpwYXNz")])
    assert (status, headers["www-authenticate"]) == (401, "Bearer")


def test_a_bad_token_is_401_invalid_token(service: int, ec_key: Key) -> None:
    expired = mint(ec_key, base_claims(iat=NOW - 200, exp=NOW - 100))
    status, headers, body = call(service, "GET", "/whoami", bearer(expired))
    assert (status, headers["www-authenticate"], body) == (
        401, 'Bearer error="invalid_token"', {"error": "invalid_token"},
    )  # fmt: skip


def test_a_token_of_another_purpose_is_403_naming_the_scope(service: int, ec_key: Key) -> None:
    status, headers, body = call(
        service, "GET", "/whoami", bearer(mint(ec_key, base_claims(scope="payments.refund")))
    )
    assert (status, headers["www-authenticate"], body) == (
        403, 'Bearer error="insufficient_scope", scope="payments.approve"', {"error": "insufficient_scope"},
    )  # fmt: skip


def test_details_that_do_not_cover_the_operation_are_403(service: int, ec_key: Key) -> None:
    status, headers, body = call(service, "POST", "/pay/p-2", bearer(payment_token(ec_key, "p-1")))
    assert (status, headers["www-authenticate"], body) == (
        403, 'Bearer error="insufficient_scope"', {"error": "insufficient_scope"},
    )  # fmt: skip


def test_two_authorization_headers_are_refused(service: int, ec_key: Key, other_ec_key: Key) -> None:
    good = f"Bearer {mint(ec_key)}"
    for pair in ([good, "Bearer junk"], ["Bearer junk", good], [good, good]):
        status, headers, body = call(service, "GET", "/whoami", [("Authorization", v) for v in pair])
        assert (status, headers["www-authenticate"], body) == (
            400, 'Bearer error="invalid_request"', {"error": "invalid_request"},
        )  # fmt: skip


def test_open_routes_need_no_token(service: int) -> None:
    status, _, body = call(service, "GET", "/open")
    assert (status, body) == (200, {"status": "ok"})
