"""The gateway behind a real nginx (Debian's package): allow, deny, and no bypass by spelling.

nginx runs the config block of docs/VERIFY.md as written (ports substituted), in front of the ambassador
tests' echo upstream, with `exchange gateway --proxy nginx` as its auth_request endpoint. Every process
listens on 127.0.0.1 only and is stopped by the fixtures. nginx is installed from Debian's archive when
missing (CI runs as root on a Debian machine); a machine that cannot install it skips, except under CI.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import Key

from tests.verify.conftest import (
    AUDIENCE,
    ISSUER,
    PURPOSE,
    TRUST_DOMAIN,
    TXN_SCOPE,
    base_claims,
    mint,
    mint_txn,
    public_jwks,
    txn_claims,
)
from tests.verify.test_ambassador import ROOT, free_port, start, stop

sys.path.insert(0, str(ROOT / "bench"))  # the benches' nginx helpers: one way to run nginx here
from harness import nginx

ROUTES = f"""
[[route]]
prefix = "/open"
open = true

[[route]]
methods = ["POST"]
prefix = "/payments/"
purpose = "{PURPOSE}"

[[route]]
methods = ["GET", "HEAD"]
prefix = "/accounts/"
"""


def nginx_binary() -> str:
    found = nginx.binary()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed and could not be installed with apt-get")
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return found


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, ec_key: Key) -> Iterator[int]:
    binary = nginx_binary()
    work = tmp_path_factory.mktemp("nginx-gateway")
    (work / "jwks.json").write_text(json.dumps(public_jwks(ec_key)))
    (work / "routes.toml").write_text(ROUTES)
    up_port, gw_port, listen = free_port(), free_port(), free_port()
    upstream = start(
        [sys.executable, "-m", "uvicorn", "tests.verify.upstream_app:app", "--host", "127.0.0.1",
         "--port", str(up_port), "--log-level", "warning", "--no-access-log"], up_port,
    )  # fmt: skip
    gateway = start(
        [str(Path(sys.executable).parent / "exchange"), "gateway", "--proxy", "nginx",
         "--listen", f"127.0.0.1:{gw_port}", "--issuer", ISSUER, "--audience", AUDIENCE,
         "--jwks-file", str(work / "jwks.json"), "--routes", str(work / "routes.toml")], gw_port,
    )  # fmt: skip
    block = nginx.docs_gateway_block(
        ROOT / "docs" / "VERIFY.md", listen=listen, upstream=up_port, gateway=gw_port
    )
    conf = nginx.write_config(work, block)
    front = start(nginx.argv(binary, conf), listen)
    try:
        yield listen
    finally:
        for process in (front, gateway, upstream):
            stop(process)


def raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Exactly these request bytes over a socket; the answer parsed by http.client (chunked or not)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, body


def request(method: str, target: str, headers: list[tuple[str, str]] = (), body: bytes = b"") -> bytes:  # type: ignore[assignment]
    lines = [f"{method} {target} HTTP/1.1", "Host: payments.test", "Connection: close",
             f"Content-Length: {len(body)}", *(f"{name}: {value}" for name, value in headers)]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def echoed(body: bytes) -> dict[str, Any]:
    echo: dict[str, Any] = json.loads(body)
    echo["header_map"] = {}
    for name, value in echo["headers"]:
        echo["header_map"].setdefault(name, []).append(value)
    return echo


def token(key: Key, **claims: Any) -> list[tuple[str, str]]:
    now = int(time.time())
    return [("Authorization", f"Bearer {mint(key, base_claims(iat=now, exp=now + 300, **claims))}")]


class TestAllowAndDeny:
    def test_a_valid_token_reaches_the_upstream_with_our_identity(self, front: int, ec_key: Key) -> None:
        status, _, body = raw(front, request("POST", "/payments/p-1?x=1", token(ec_key), b"{}"))
        assert status == 200, body
        echo = echoed(body)
        assert (echo["method"], echo["raw_path"], echo["query"]) == ("POST", "/payments/p-1", "x=1")
        assert echo["header_map"]["x-purpose-sub"] == ["alice"]
        assert echo["header_map"]["x-purpose-scope"] == [PURPOSE]
        assert json.loads(echo["header_map"]["x-purpose-claims"][0])["sub"] == "alice"

    def test_no_token_is_401_with_the_bare_challenge(self, front: int) -> None:
        status, headers, body = raw(front, request("POST", "/payments/p-1"))
        assert (status, headers["www-authenticate"], json.loads(body)) == (
            401, "Bearer", {"error": "invalid_token"},
        )  # fmt: skip

    def test_a_bad_token_is_401_invalid_token(self, front: int, ec_key: Key) -> None:
        now = int(time.time())
        expired = mint(ec_key, base_claims(iat=now - 600, exp=now - 300))
        status, headers, body = raw(
            front, request("POST", "/payments/p-1", [("Authorization", f"Bearer {expired}")])
        )
        assert (status, headers["www-authenticate"], json.loads(body)) == (
            401, 'Bearer error="invalid_token"', {"error": "invalid_token"},
        )  # fmt: skip

    def test_a_token_of_another_purpose_is_403(self, front: int, ec_key: Key) -> None:
        status, headers, body = raw(
            front, request("POST", "/payments/p-1", token(ec_key, scope="payments.refund"))
        )
        assert (status, headers["www-authenticate"], json.loads(body)) == (
            403, f'Bearer error="insufficient_scope", scope="{PURPOSE}"', {"error": "insufficient_scope"},
        )  # fmt: skip

    def test_a_single_use_token_is_accepted_once(self, front: int, ec_key: Key) -> None:
        once = token(ec_key, single_use=True)
        assert raw(front, request("POST", "/payments/p-1", once))[0] == 200
        assert raw(front, request("POST", "/payments/p-1", once))[0] == 401

    def test_an_unrouted_path_is_closed(self, front: int, ec_key: Key) -> None:
        assert raw(front, request("GET", "/admin", token(ec_key)))[0] not in range(200, 400)


# Each reaches /accounts/1 (a token needed) through the open prefix, if the gateway matched one path
# and the upstream resolved another.
BYPASS_PATHS = [
    "/open/../accounts/1", "/open/%2e%2e/accounts/1", "/open/.%2E/accounts/1", "/open/..%2faccounts/1",
    "/open/%2e%2e%2faccounts/1", "/open//../accounts/1", "/open/%252e%252e/accounts/1",
    "/open;/../accounts/1", "/open/..;/accounts/1", "/open/..\\accounts/1",
    "/open/%5c..%5caccounts/1", "/open/%00/../accounts/1",
    "/open/%c0%ae%c0%ae/accounts/1", "/open/./../accounts/1",
]  # fmt: skip


class TestNoBypass:
    @pytest.mark.parametrize("path", BYPASS_PATHS)
    def test_no_path_spelling_reaches_a_protected_route_through_an_open_one(
        self, front: int, path: str
    ) -> None:
        status, _, body = raw(front, request("GET", path))
        assert status not in range(200, 400), body

    def test_the_open_route_itself_stays_open(self, front: int) -> None:
        assert raw(front, request("GET", "/open/x"))[0] == 200

    @pytest.mark.parametrize("method", ["post", "Post"])
    def test_a_method_spelled_in_another_case_is_refused(self, front: int, ec_key: Key, method: str) -> None:
        # The route table gives POST /payments/ a purpose; "post" must not slip past it.
        assert raw(front, request(method, "/payments/p-1", token(ec_key, scope="other.purpose")))[
            0
        ] not in range(200, 400)

    def test_client_identity_headers_never_reach_the_upstream(self, front: int, ec_key: Key) -> None:
        forged = [("X-Purpose-Sub", "root"), ("x-PURPOSE-sub", "root"), ("X_Purpose_Sub", "root"),
                  ("X-Purpose-Claims", '{"sub":"root"}'), ("X-Purpose-Scope", "admin")]  # fmt: skip
        status, _, body = raw(front, request("GET", "/open/x", forged))
        assert status == 200
        names = [name for name, _ in echoed(body)["headers"]]
        assert [name for name in names if name.replace("_", "-").startswith("x-purpose-")] == []
        status, _, body = raw(front, request("GET", "/accounts/1", forged + token(ec_key)))
        assert status == 200
        echo = echoed(body)["header_map"]
        assert (echo["x-purpose-sub"], echo["x-purpose-scope"]) == (["alice"], [PURPOSE])
        assert "x_purpose_sub" not in echo

    def test_method_override_headers_are_dropped(self, front: int) -> None:
        overrides = [("X-HTTP-Method-Override", "DELETE"), ("X-Method-Override", "DELETE"),
                     ("X-HTTP-Method", "DELETE"), ("X-Original-URL", "/accounts/1")]  # fmt: skip
        status, _, body = raw(front, request("POST", "/open/x", overrides))
        assert status == 200
        names = {name for name, _ in echoed(body)["headers"]}
        assert not names & {"x-http-method-override", "x-method-override", "x-http-method", "x-original-url"}

    def test_a_forged_original_uri_is_replaced_by_nginx(self, front: int) -> None:
        # The client cannot tell the gateway which request it is asking about.
        spoof = [("X-Original-URI", "/open/x"), ("X-Original-Method", "GET")]
        assert raw(front, request("GET", "/accounts/1", spoof))[0] == 401

    def test_two_authorization_headers_are_refused(self, front: int, ec_key: Key) -> None:
        good = token(ec_key)
        status, _, _ = raw(front, request("GET", "/accounts/1", [*good, ("Authorization", "Bearer junk")]))
        assert status not in range(200, 400)


@pytest.fixture(scope="module")
def txn_front(tmp_path_factory: pytest.TempPathFactory, ec_key: Key) -> Iterator[int]:
    """The same docs block in front of a gateway that checks Txn-Tokens only (--txn-trust-domain)."""
    binary = nginx_binary()
    work = tmp_path_factory.mktemp("nginx-txn-gateway")
    (work / "jwks.json").write_text(json.dumps(public_jwks(ec_key)))
    up_port, gw_port, listen = free_port(), free_port(), free_port()
    upstream = start(
        [sys.executable, "-m", "uvicorn", "tests.verify.upstream_app:app", "--host", "127.0.0.1",
         "--port", str(up_port), "--log-level", "warning", "--no-access-log"], up_port,
    )  # fmt: skip
    gateway = start(
        [str(Path(sys.executable).parent / "exchange"), "gateway", "--proxy", "nginx",
         "--listen", f"127.0.0.1:{gw_port}", "--issuer", ISSUER, "--txn-trust-domain", TRUST_DOMAIN,
         "--txn-scope", TXN_SCOPE, "--jwks-file", str(work / "jwks.json")], gw_port,
    )  # fmt: skip
    block = nginx.docs_gateway_block(
        ROOT / "docs" / "VERIFY.md", listen=listen, upstream=up_port, gateway=gw_port
    )
    front = start(nginx.argv(binary, nginx.write_config(work, block)), listen)
    try:
        yield listen
    finally:
        for process in (front, gateway, upstream):
            stop(process)


def txn_token(key: Key, **claims: Any) -> str:
    now = int(time.time())
    return mint_txn(key, txn_claims(iat=now, exp=now + 300, **claims))


class TestTxnTokens:
    def test_a_txn_token_reaches_the_upstream_unmodified_with_its_claims(
        self, txn_front: int, ec_key: Key
    ) -> None:
        value = txn_token(ec_key)
        forged = [("X-Purpose-Txn-Claims", '{"req_wl":"admin"}')]
        status, _, body = raw(txn_front, request("GET", "/orders/1", [("Txn-Token", value), *forged]))
        assert status == 200, body
        headers = echoed(body)["header_map"]
        assert headers["txn-token"] == [value]
        [claims] = headers["x-purpose-txn-claims"]
        assert json.loads(claims)["req_wl"] == "gateway"

    @pytest.mark.parametrize("claims", [{"aud": "other.example"}, {"scope": "orders.read"}])
    def test_refused_txn_tokens_never_reach_the_upstream(
        self, txn_front: int, ec_key: Key, claims: dict[str, Any]
    ) -> None:
        status, _, body = raw(
            txn_front, request("GET", "/orders/1", [("Txn-Token", txn_token(ec_key, **claims))])
        )
        assert status == 403 and b"x-upstream" not in body.lower()
        status, _, _ = raw(txn_front, request("GET", "/orders/1"))
        assert status == 403
