"""Every integration honours the `Txn-Token` header alike (draft-ietf-oauth-transaction-tokens-10 §12),
under its real framework and a real server: a valid token reaches the handler with txn, req_wl, tctx
and rctx, and the header to send on is the one received; no token, a bad one, one of another trust
domain or expired: 403 invalid_txn_token, no challenge (§13.12); another scope: 403 insufficient_scope;
two tokens (two headers, or two in one): 400 invalid_request. One JSON body shape everywhere."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from joserfc.jwk import Key

from exchange.verify.txn import TxnTokenVerifier
from tests.verify.conftest import ISSUER, NOW, TRUST_DOMAIN, mint, mint_txn, public_jwks, txn_claims
from tests.verify.frameworks import txn_apps
from tests.verify.frameworks.test_refusals import call, serve_asgi, serve_wsgi

FRAMEWORKS: dict[str, tuple[Callable[[TxnTokenVerifier], Any], Callable[[Any], Any]]] = {
    **{name: (factory, serve_asgi) for name, factory in txn_apps.ASGI.items()},
    **{name: (factory, serve_wsgi) for name, factory in txn_apps.WSGI.items()},
}


@pytest.fixture(scope="module", params=sorted(FRAMEWORKS))
def service(request: pytest.FixtureRequest, ec_key: Key) -> Iterator[int]:
    factory, serve = FRAMEWORKS[request.param]
    verifier = TxnTokenVerifier(
        trust_domain=TRUST_DOMAIN, issuer=ISSUER, jwks=public_jwks(ec_key), clock=lambda: NOW
    )
    with serve(factory(verifier)) as port:
        yield port


def txn(token: str) -> list[tuple[str, str]]:
    return [("Txn-Token", token)]


def test_a_valid_txn_token_reaches_the_handler_with_its_context(service: int, ec_key: Key) -> None:
    token = mint_txn(ec_key)
    status, _, body = call(service, "GET", "/order", txn(token))
    assert status == 200, body
    assert body == {
        "txn": "97053963-771d-49cc-a4e3-20aad399c312",
        "req_wl": "gateway",
        "tctx": {"item": "sku-42", "quantity": 3},
        "rctx": {"req_ip": "69.151.72.123"},
        "scope": "orders.place",
        "forward": token,  # §12.2: passed on exactly as received
    }


def test_any_scope_where_the_route_names_none(service: int, ec_key: Key) -> None:
    status, _, body = call(service, "GET", "/any", txn(mint_txn(ec_key, txn_claims(scope="orders.read"))))
    assert (status, body["scope"]) == (200, "orders.read")


def test_no_txn_token_is_403_without_a_challenge(service: int) -> None:
    status, headers, body = call(service, "GET", "/order")
    assert (status, body) == (403, {"error": "invalid_txn_token"})
    assert "www-authenticate" not in headers and headers["cache-control"] == "no-store"


def test_a_bearer_token_is_not_a_txn_token(service: int, ec_key: Key) -> None:
    # §12: the Authorization header is never where a Txn-Token travels.
    status, _, body = call(service, "GET", "/order", [("Authorization", f"Bearer {mint_txn(ec_key)}")])
    assert (status, body) == (403, {"error": "invalid_txn_token"})


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "other-domain.example"},
        {"exp": NOW - 100, "iat": NOW - 200},
        {"iss": "https://evil.example"},
        {"unknown": 1},
    ],
)
def test_a_bad_txn_token_is_403_invalid_txn_token(service: int, ec_key: Key, claims: dict[str, Any]) -> None:
    status, headers, body = call(service, "GET", "/order", txn(mint_txn(ec_key, txn_claims(**claims))))
    assert (status, body) == (403, {"error": "invalid_txn_token"})
    assert "www-authenticate" not in headers


def test_forged_and_mistyped_tokens_are_refused(service: int, ec_key: Key, other_ec_key: Key) -> None:
    for token in (mint_txn(other_ec_key, kid=ec_key.kid), mint(ec_key, txn_claims()), "x.y.z"):
        status, _, body = call(service, "GET", "/order", txn(token))
        assert (status, body) == (403, {"error": "invalid_txn_token"}), token


def test_a_txn_token_of_another_scope_is_403_insufficient_scope(service: int, ec_key: Key) -> None:
    status, headers, body = call(
        service, "GET", "/order", txn(mint_txn(ec_key, txn_claims(scope="orders.read")))
    )
    assert (status, body) == (403, {"error": "insufficient_scope"})
    assert "www-authenticate" not in headers


def test_exactly_one_txn_token(service: int, ec_key: Key) -> None:
    good = mint_txn(ec_key)
    for headers in ([("Txn-Token", good), ("Txn-Token", good)], [("Txn-Token", f"{good}, {good}")]):
        status, _, body = call(service, "GET", "/order", headers)
        assert (status, body) == (400, {"error": "invalid_request"})


def test_open_routes_need_no_txn_token(service: int) -> None:
    status, _, body = call(service, "GET", "/open")
    assert (status, body) == (200, {"status": "ok"})
