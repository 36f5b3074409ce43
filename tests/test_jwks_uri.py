"""A trusted issuer whose keys are fetched from its JWKS URI: cached, refreshed on rotation, bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.conftest import exchange_form
from tests.idp import FakeIdP
from tests.server import Server, free_port


class JWKSServer:
    """A real HTTP JWKS endpoint on loopback that counts its fetches."""

    def __init__(self, port: int = 0) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = msgspec.json.encode({"keys": outer.keys})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "max-age=600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    srv = JWKSServer()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_rotated_issuer_key_is_fetched_once_and_made_up_kids_cost_nothing(
    tmp_path: Path, jwks_server: JWKSServer
) -> None:
    old = FakeIdP("https://rotating.example.com", "idp_ec", "ES256")
    new = FakeIdP("https://rotating.example.com", "client_ec", "ES256")  # another real key pair
    jwks_server.keys = old.jwks()["keys"]
    port = free_port()
    config = tmp_path / "exchange.toml"
    config.write_text(f'''
issuer = "http://127.0.0.1:{port}"
[store]
url = "sqlite:///exchange.db"
[[trusted_issuers]]
issuer = "{old.issuer}"
jwks_uri = "{jwks_server.url}"
audiences = ["purpose-exchange"]
algorithms = ["ES256"]
jwks_cooldown = 2
[[clients]]
client_id = "bank-web"
tokens_issued_to = ["purpose-exchange"]
purposes = ["payments.approve"]
[purposes."payments.approve"]
audience = "https://payments.internal"
''')
    server = Server(config, port)
    try:
        server.wait_ready()

        def exchange(token: str) -> httpx.Response:
            return httpx.post(f"{server.url}/token", data=exchange_form(token), timeout=10)

        assert exchange(old.token()).status_code == 200
        assert exchange(old.token()).status_code == 200
        assert jwks_server.fetches == 1  # cached

        # The issuer rotates: the new kid is unknown, so the cache refetches (once) and accepts it.
        jwks_server.keys = old.jwks()["keys"] + new.jwks()["keys"]
        time.sleep(2.1)  # the 2 s cooldown since the first fetch
        # The cooldown runs from the rotation's fetch, which happens after this instant.
        started = time.monotonic()
        assert exchange(new.token()).status_code == 200
        assert jwks_server.fetches == 2

        # A burst of made-up kids: all refused, and at most one fetch per cooldown (2 s) while it lasts,
        # so none at all when the burst is quick, as it normally is.
        for i in range(20):
            resp = exchange(new.token(header={"kid": f"made-up-{i}"}))
            assert resp.json()["error_description"] == "subject_token is invalid"
        assert jwks_server.fetches <= 2 + int((time.monotonic() - started) // 2)
    finally:
        server.stop()
