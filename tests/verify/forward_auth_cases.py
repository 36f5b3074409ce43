"""What every proxy in front of `exchange gateway` must prove: allow, deny, and no bypass.

Each proxy's test module (test_nginx_gateway.py, test_traefik_gateway.py, test_caddy_gateway.py) runs
the real proxy with its config block of docs/VERIFY.md as written (ports substituted), in front of the
echo upstream (tests/verify/upstream_app.py) and a real `exchange gateway` process, provides the
module-scoped `front` fixture (the proxy's port), and subclasses `ForwardAuthCases`; with a `txn_front`
fixture (the same block in front of a gateway started with `--txn-trust-domain`) it subclasses
`TxnForwardAuthCases` too. The attacks are
sent as raw bytes; a case passes when the attack is refused, or when what reached the upstream is
something the gateway would have let through anyway (Traefik cleans `..` out of a path before both
the check and the upstream: the upstream then serves the clean path, which is the one checked).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, Key

from exchange.verify.routes import path_problem
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
from tests.verify.test_ambassador import ROOT, free_port, start, stop, wait_until_listening

DOCS = ROOT / "docs" / "VERIFY.md"
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

# Each reaches /accounts/1 (a token needed) through the open prefix, if the gateway matched one path
# and the upstream resolved another.
BYPASS_PATHS = [
    "/open/../accounts/1", "/open/%2e%2e/accounts/1", "/open/.%2E/accounts/1", "/open/..%2faccounts/1",
    "/open/%2e%2e%2faccounts/1", "/open//../accounts/1", "/open/%252e%252e/accounts/1",
    "/open;/../accounts/1", "/open/..;/accounts/1", "/open/..\\accounts/1",
    "/open/%5c..%5caccounts/1", "/open/%00/../accounts/1", "/open/%2faccounts/1", "/open/%5caccounts/1",
    "/open/%c0%ae%c0%ae/accounts/1", "/open/./../accounts/1", "/open/..%252faccounts/1",
    "/open/;/../accounts/1", "/open/%2e%2e;/accounts/1", "//accounts/1", "/open/%2E%2e/accounts/1",
]  # fmt: skip

# A client's identity header in every spelling an upstream could read as ours: case, and `_` for `-`
# (WSGI/CGI servers fold both into HTTP_X_PURPOSE_SUB).
FORGED = [
    ("X-Purpose-Sub", "root"), ("x-PURPOSE-sub", "root"), ("X_Purpose_Sub", "root"),
    ("x_purpose_sub", "root"), ("X-Purpose_Sub", "root"), ("X_PURPOSE_SUB", "root"),
    ("X-Purpose-Scope", "admin"), ("X_Purpose_Scope", "admin"),
    ("X-Purpose-Claims", '{"sub":"root"}'), ("X_Purpose_Claims", '{"sub":"root"}'),
    ("X-Purpose-Txn-Claims", '{"req_wl":"root"}'), ("X_Purpose_Txn_Claims", '{"req_wl":"root"}'),
]  # fmt: skip
OVERRIDES = [
    ("X-HTTP-Method-Override", "DELETE"), ("X-Method-Override", "DELETE"), ("X-HTTP-Method", "DELETE"),
    ("X_HTTP_Method_Override", "DELETE"), ("x-http-method-override", "DELETE"),
    ("X-Original-URL", "/accounts/1"), ("X-Rewrite-URL", "/accounts/1"), ("X_Original_URL", "/accounts/1"),
]  # fmt: skip


def required(found: str | None, name: str, how: str) -> str:
    """The proxy binary, or the test skips (fails under CI: there it must be obtainable)."""
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed and could not be obtained ({how})")
        pytest.skip(f"{name} is not installed ({how})")
    return found


@contextmanager
def gateway_and_upstream(work: Path, key: Key, proxy: str, *, txn: bool = False) -> Iterator[tuple[int, int]]:
    """The echo upstream and `exchange gateway --proxy PROXY` on free loopback ports: (upstream, gateway).

    The gateway checks purpose tokens on the ROUTES table, or with `txn` Txn-Tokens only (of TXN_SCOPE
    in TRUST_DOMAIN, on every path)."""
    (work / "jwks.json").write_text(json.dumps(public_jwks(key)))
    (work / "routes.toml").write_text(ROUTES)
    checks = (
        ["--txn-trust-domain", TRUST_DOMAIN, "--txn-scope", TXN_SCOPE]
        if txn
        else ["--audience", AUDIENCE, "--routes", str(work / "routes.toml")]
    )
    up_port, gw_port = free_port(), free_port()
    upstream = start(
        [sys.executable, "-m", "uvicorn", "tests.verify.upstream_app:app", "--host", "127.0.0.1",
         "--port", str(up_port), "--log-level", "warning", "--no-access-log"], up_port,
    )  # fmt: skip
    try:
        gateway = start(
            [str(Path(sys.executable).parent / "exchange"), "gateway", "--proxy", proxy,
             "--listen", f"127.0.0.1:{gw_port}", "--issuer", ISSUER, "--jwks-file", str(work / "jwks.json"),
             *checks], gw_port,
        )  # fmt: skip
        try:
            yield up_port, gw_port
        finally:
            stop(gateway)
    finally:
        stop(upstream)


@contextmanager
def running(
    argv: Sequence[str], port: int, log: Path, env: dict[str, str] | None = None, *, txn: bool = False
) -> Iterator[None]:
    """A proxy process, its output in `log`, until its config answers through the gateway (Traefik loads
    its file provider after the port opens): the open route's 200, or with `txn` the gateway's 403."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_listening(port, process)
        deadline = time.monotonic() + 15
        while raw(port, request("GET", "/open/ready"))[0] != (403 if txn else 200):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the proxy never served its config: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield
    finally:
        stop(process)


def raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Exactly these request bytes over a socket; the answer parsed by http.client (chunked or not)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, body


def request(method: str, target: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> bytes:
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


def reached_upstream(status: int, body: bytes) -> dict[str, Any] | None:
    """The echo of what reached the upstream, or None when the request was refused."""
    if status not in range(200, 400):
        return None
    echo = echoed(body)
    assert "headers" in echo, body
    return echo


def identity_seen(echo: dict[str, Any]) -> dict[str, list[str]]:
    """The headers the upstream got that it could read as identity (`_` folded to `-`, any case)."""
    seen: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        if name.lower().replace("_", "-").startswith("x-purpose-"):
            seen.setdefault(name, []).append(value)
    return seen


class ForwardAuthCases:
    """The cases; a subclass in each proxy's module runs them against its `front` fixture."""

    def test_a_valid_token_reaches_the_upstream_with_our_identity(self, front: int, ec_key: Key) -> None:
        status, _, body = raw(front, request("POST", "/payments/p-1?x=1", token(ec_key), b"{}"))
        assert status == 200, body
        echo = echoed(body)
        assert (echo["method"], echo["raw_path"], echo["query"], echo["body"]) == (
            "POST", "/payments/p-1", "x=1", "{}",
        )  # fmt: skip
        identity = identity_seen(echo)
        assert sorted(identity) == ["x-purpose-claims", "x-purpose-scope", "x-purpose-sub"], identity
        assert (identity["x-purpose-sub"], identity["x-purpose-scope"]) == (["alice"], [PURPOSE])
        assert json.loads(identity["x-purpose-claims"][0])["sub"] == "alice"

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

    def test_the_open_route_is_open_and_carries_no_identity(self, front: int) -> None:
        status, _, body = raw(front, request("GET", "/open/x"))
        assert status == 200, body
        assert identity_seen(echoed(body)) == {}

    @pytest.mark.parametrize("path", BYPASS_PATHS)
    def test_no_path_spelling_reaches_a_protected_route_through_an_open_one(
        self, front: int, path: str
    ) -> None:
        status, _, body = raw(front, request("GET", path))
        echo = reached_upstream(status, body)
        if echo is not None:
            # Served: then only as a canonical path under the open prefix (what the gateway checked).
            assert echo["raw_path"].startswith("/open/"), (path, echo["raw_path"])
            assert path_problem(echo["raw_path"].encode("latin-1")) is None, (path, echo["raw_path"])

    @pytest.mark.parametrize("method", ["post", "Post", "pOST"])
    def test_a_method_spelled_in_another_case_is_refused(self, front: int, ec_key: Key, method: str) -> None:
        # The route table gives POST /payments/ a purpose; "post" must not slip past it.
        status, _, body = raw(front, request(method, "/payments/p-1", token(ec_key, scope="other.purpose")))
        assert status not in range(200, 400), body

    @pytest.mark.parametrize(("name", "value"), FORGED)
    @pytest.mark.parametrize("route", ["open", "verified"])
    def test_a_client_identity_header_never_reaches_the_upstream(
        self, front: int, ec_key: Key, route: str, name: str, value: str
    ) -> None:
        auth = token(ec_key) if route == "verified" else []
        path = "/accounts/1" if route == "verified" else "/open/x"
        status, _, body = raw(front, request("GET", path, [(name, value), *auth]))
        echo = reached_upstream(status, body)
        if echo is not None:
            identity = identity_seen(echo)
            assert value not in [v for values in identity.values() for v in values], identity
            expected = ["x-purpose-claims", "x-purpose-scope", "x-purpose-sub"] if auth else []
            assert sorted(identity) == expected, identity

    @pytest.mark.parametrize("connection", ["close, X-Purpose-Sub", "close, X_Purpose_Sub"])
    def test_connection_cannot_smuggle_an_identity_header(self, front: int, connection: str) -> None:
        # Connection-named headers are stripped hop by hop: from the check and the upstream alike.
        forged = [("Connection", connection), (connection.split(", ")[1], "root")]
        status, _, body = raw(front, request("GET", "/open/x", forged).replace(b"Connection: close\r\n", b""))
        echo = reached_upstream(status, body)
        if echo is not None:
            assert identity_seen(echo) == {}

    @pytest.mark.parametrize(("name", "value"), OVERRIDES)
    def test_method_override_headers_never_reach_the_upstream(
        self, front: int, name: str, value: str
    ) -> None:
        status, _, body = raw(front, request("POST", "/open/x", [(name, value)]))
        echo = reached_upstream(status, body)
        if echo is not None:
            names = {n.lower().replace("_", "-") for n, _ in echo["headers"]}
            assert not names & {"x-http-method-override", "x-method-override", "x-http-method",
                                "x-original-url", "x-rewrite-url"}  # fmt: skip

    @pytest.mark.parametrize(
        "spoof",
        [[("X-Original-URI", "/open/x"), ("X-Original-Method", "GET")],
         [("X-Forwarded-Uri", "/open/x"), ("X-Forwarded-Method", "GET")],
         [("X_Forwarded_Uri", "/open/x"), ("X_Forwarded_Method", "GET")],
         [("X_Original_URI", "/open/x"), ("X_Original_Method", "GET")]],
    )  # fmt: skip
    def test_the_client_cannot_say_which_request_is_checked(
        self, front: int, spoof: list[tuple[str, str]]
    ) -> None:
        assert raw(front, request("GET", "/accounts/1", spoof))[0] in (400, 401, 500)

    def test_the_forwarding_headers_are_the_proxys(self, front: int) -> None:
        forged = [("X-Forwarded-For", "203.0.113.9"), ("X-Real-IP", "203.0.113.9"),
                  ("Forwarded", "for=203.0.113.9;proto=https"), ("X-Forwarded-Host", "evil.example"),
                  ("X-Forwarded-Proto", "https")]  # fmt: skip
        status, _, body = raw(front, request("GET", "/open/x", forged))
        assert status == 200, body
        names = {"x-forwarded-for", "x-real-ip", "forwarded", "x-forwarded-host", "x-forwarded-proto"}
        seen = [(n, v) for n, v in echoed(body)["headers"] if n.lower() in names]
        assert not [(n, v) for n, v in seen if "203.0.113.9" in v or "evil" in v or "https" in v], seen
        assert ("x-forwarded-for", "127.0.0.1") in seen

    def test_two_authorization_headers_are_refused(self, front: int, ec_key: Key) -> None:
        good = token(ec_key)
        for pair in ([*good, ("Authorization", "Bearer junk")], [("Authorization", "Bearer junk"), *good]):
            status, _, body = raw(front, request("GET", "/accounts/1", pair))
            assert status not in range(200, 400), body


def txn_token(key: Key, **claims: Any) -> str:
    now = int(time.time())
    return mint_txn(key, txn_claims(**{"iat": now, "exp": now + 300, **claims}))


class TxnForwardAuthCases:
    """Txn-Tokens through the proxy (docs/VERIFY.md: the same block serves them); `txn_front` fixture."""

    # Whether the proxy hands the client the check's refusal body (nginx answers every 403 itself).
    relays_refusal_body = True

    def refused_with(self, answer: tuple[int, dict[str, str], bytes], error: str) -> None:
        status, headers, body = answer
        assert (status, "x-upstream" in headers) == (403, False), body
        if self.relays_refusal_body:
            assert json.loads(body) == {"error": error}

    def test_a_txn_token_reaches_the_upstream_unmodified_with_its_claims(
        self, txn_front: int, ec_key: Key
    ) -> None:
        value = txn_token(ec_key)
        status, headers, body = raw(
            txn_front, request("POST", "/orders/1?x=1", [("Txn-Token", value)], b"{}")
        )
        assert (status, headers.get("x-upstream")) == (200, "yes"), body
        echo = echoed(body)
        assert (echo["method"], echo["raw_path"], echo["query"]) == ("POST", "/orders/1", "x=1")
        assert echo["header_map"]["txn-token"] == [value]
        identity = identity_seen(echo)
        assert sorted(identity) == ["x-purpose-txn-claims"], identity
        claims = json.loads(identity["x-purpose-txn-claims"][0])
        assert (claims["req_wl"], claims["txn"], claims["tctx"]) == (
            "gateway", txn_claims()["txn"], {"item": "sku-42", "quantity": 3},
        )  # fmt: skip

    @pytest.mark.parametrize(
        "name", ["X-Purpose-Txn-Claims", "x-purpose-txn-claims", "X_Purpose_Txn_Claims", "X-Purpose-Sub"]
    )
    def test_a_client_identity_header_beside_a_valid_txn_token_is_refused(
        self, txn_front: int, ec_key: Key, name: str
    ) -> None:
        forged = [("Txn-Token", txn_token(ec_key)), (name, '{"req_wl":"admin"}')]
        status, _, body = raw(txn_front, request("GET", "/orders/1", forged))
        echo = reached_upstream(status, body)
        if echo is not None:  # nginx drops `_` names itself: then the upstream has our claims only
            identity = identity_seen(echo)
            assert sorted(identity) == ["x-purpose-txn-claims"], identity
            assert json.loads(identity["x-purpose-txn-claims"][0])["req_wl"] == "gateway"

    @pytest.mark.parametrize(
        ("claims", "error"),
        [({"aud": "other.example"}, "invalid_txn_token"), ({"scope": "orders.read"}, "insufficient_scope"),
         ({"iss": "https://elsewhere.example"}, "invalid_txn_token"), ({"exp": 1}, "invalid_txn_token"),
         ({"txn": None}, "invalid_txn_token"), ({"req_wl": None}, "invalid_txn_token")],
        ids=["audience", "scope", "issuer", "expired", "no-txn", "no-req_wl"],
    )  # fmt: skip
    def test_refused_txn_tokens_never_reach_the_upstream(
        self, txn_front: int, ec_key: Key, claims: dict[str, Any], error: str
    ) -> None:
        answer = raw(txn_front, request("GET", "/orders/1", [("Txn-Token", txn_token(ec_key, **claims))]))
        self.refused_with(answer, error)

    def test_no_txn_token_is_403(self, txn_front: int) -> None:
        self.refused_with(raw(txn_front, request("GET", "/orders/1")), "invalid_txn_token")

    def test_a_token_of_another_key_or_type_is_refused(self, txn_front: int, ec_key: Key) -> None:
        now = int(time.time())
        impostor = ECKey.generate_key("P-256", parameters={"kid": ec_key.kid})  # our kid, not our key
        stranger = mint_txn(impostor, txn_claims(iat=now, exp=now + 300))
        purpose = mint(ec_key, base_claims(iat=now, exp=now + 300))  # not a Txn-Token
        for value in (stranger, purpose):
            self.refused_with(
                raw(txn_front, request("GET", "/orders/1", [("Txn-Token", value)])), "invalid_txn_token"
            )
        # A gateway of Txn-Tokens only takes no bearer token in place of one.
        answer = raw(txn_front, request("GET", "/orders/1", [("Authorization", f"Bearer {purpose}")]))
        self.refused_with(
            answer, "invalid_txn_token"
        )  # a txn-only gateway takes no bearer token in place of one

    def test_two_txn_token_headers_are_refused(self, txn_front: int, ec_key: Key) -> None:
        good, other = txn_token(ec_key), txn_token(ec_key, req_wl="other")
        for pair in ([("Txn-Token", good), ("Txn-Token", other)], [("Txn-Token", f"{good}, {other}")]):
            status, headers, body = raw(txn_front, request("GET", "/orders/1", pair))
            assert status not in range(200, 400) and "x-upstream" not in headers, body
