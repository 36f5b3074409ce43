"""Fixtures for the downstream verifier: real key pairs, a real JWKS server on 127.0.0.1, a token mint.

Tokens are minted here with joserfc exactly as the contract describes (compact JWS, typ at+jwt, kid =
RFC 7638 thumbprint) so the verifier is tested against the format, not against the exchange's code.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

ISSUER = "https://exchange.test"
AUDIENCE = "payments"
PURPOSE = "payments.approve"
# A fixed "now" well inside the validity of every token minted with the defaults below.
NOW = 1_900_000_000


def _keyed(key: Key) -> Key:
    key.ensure_kid()
    return key


@pytest.fixture(scope="session")
def ec_key() -> Key:
    return _keyed(ECKey.generate_key("P-256"))


@pytest.fixture(scope="session")
def other_ec_key() -> Key:
    return _keyed(ECKey.generate_key("P-256"))


@pytest.fixture(scope="session")
def rsa_key() -> Key:
    return _keyed(RSAKey.generate_key(2048))


@pytest.fixture(scope="session")
def ed_key() -> Key:
    return _keyed(OKPKey.generate_key("Ed25519"))


def public_jwks(*keys: Key) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False) for key in keys]}


def base_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": AUDIENCE,
        "exp": NOW + 60,
        "iat": NOW,
        "jti": uuid.uuid4().hex,
        "client_id": "checkout",
        "scope": PURPOSE,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def mint(key: Key, claims: dict[str, Any] | None = None, *, alg: str = "ES256", **header: Any) -> str:
    """Sign `claims` (default: base_claims()) as a purpose token with `key`."""
    protected = {"alg": alg, "typ": "at+jwt", "kid": key.kid, **header}
    protected = {name: value for name, value in protected.items() if value is not None}
    payload = json.dumps(claims if claims is not None else base_claims())
    return jws.serialize_compact(protected, payload, key, algorithms=[alg])


@dataclass
class JWKSServer:
    """What the local JWKS endpoint answers; tests change it between fetches."""

    url: str = ""
    status: int = 200
    body: bytes = b'{"keys": []}'
    headers: dict[str, str] = field(default_factory=lambda: {"Cache-Control": "max-age=300"})
    delay: float = 0.0
    fetches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, *keys: Key, max_age: int | None = 300) -> None:
        self.status = 200
        self.body = json.dumps(public_jwks(*keys)).encode()
        self.headers = {} if max_age is None else {"Cache-Control": f"max-age={max_age}"}


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    state = JWKSServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with state.lock:
                state.fetches += 1
            if state.delay:
                # A slow issuer, so concurrent callers really do overlap one fetch in flight.
                time.sleep(state.delay)
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(state.body)))
            for name, value in state.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            # A client that timed out and hung up (the timeout test) is expected, not a failure.
            pass

    server = Server(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class FakeClock:
    """Monotonic time the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def postgres_dsn() -> str:
    return os.environ.get("PURPOSE_EXCHANGE_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


MintFn = Callable[..., str]


TRUST_DOMAIN = "trust-domain.example"
TXN_SCOPE = "orders.place"


def txn_claims(**overrides: Any) -> dict[str, Any]:
    """A Txn-Token's claims as the exchange mints them (draft-ietf-oauth-transaction-tokens-10 §9.2)."""
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "iat": NOW,
        "aud": TRUST_DOMAIN,
        "exp": NOW + 300,
        "txn": "97053963-771d-49cc-a4e3-20aad399c312",
        "sub": "https://idp.example alice",
        "scope": TXN_SCOPE,
        "req_wl": "gateway",
        "jti": uuid.uuid4().hex,
        "sub_id": {"format": "iss_sub", "iss": "https://idp.example", "sub": "alice"},
        "tctx": {"item": "sku-42", "quantity": 3},
        "rctx": {"req_ip": "69.151.72.123"},
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def mint_txn(key: Key, claims: dict[str, Any] | None = None, *, alg: str = "ES256", **header: Any) -> str:
    """Sign `claims` (default: txn_claims()) as a Txn-Token (typ txntoken+jwt) with `key`."""
    return mint(
        key, claims if claims is not None else txn_claims(), alg=alg, **{"typ": "txntoken+jwt", **header}
    )
