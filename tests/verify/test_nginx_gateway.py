"""The gateway behind a real nginx (Debian's package): allow, deny, and no bypass by spelling.

nginx runs the config block of docs/VERIFY.md as written (ports substituted), in front of the ambassador
tests' echo upstream, with `exchange gateway --proxy nginx` as its auth_request endpoint; the cases are
the ones every proxy must pass (tests/verify/forward_auth_cases.py). Every process listens on 127.0.0.1
only and is stopped by the fixtures. nginx is installed from Debian's archive when missing (CI runs as
root on a Debian machine); a machine that cannot install it skips, except under CI.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import Key

from tests.verify.conftest import ISSUER, TRUST_DOMAIN, TXN_SCOPE, mint_txn, public_jwks, txn_claims
from tests.verify.forward_auth_cases import (
    DOCS,
    ForwardAuthCases,
    echoed,
    gateway_and_upstream,
    raw,
    request,
    required,
)
from tests.verify.test_ambassador import ROOT, free_port, start, stop

sys.path.insert(0, str(ROOT / "bench"))  # the benches' nginx helpers: one way to run nginx here
from harness import nginx


def nginx_binary() -> str:
    return required(nginx.binary(), "nginx", "apt-get install nginx")


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, ec_key: Key) -> Iterator[int]:
    binary = nginx_binary()
    work = tmp_path_factory.mktemp("nginx-gateway")
    with gateway_and_upstream(work, ec_key, "nginx") as (up_port, gw_port):
        listen = free_port()
        block = nginx.docs_gateway_block(DOCS, listen=listen, upstream=up_port, gateway=gw_port)
        front = start(nginx.argv(binary, nginx.write_config(work, block)), listen)
        try:
            yield listen
        finally:
            stop(front)


class TestNginxGateway(ForwardAuthCases):
    """Every proxy's cases. nginx answers a check's 400 (a forged header, a non-canonical path) as 500."""

    def test_underscore_headers_are_dropped_by_nginx_itself(self, front: int) -> None:
        # nginx's default `underscores_in_headers off`: neither the check nor the upstream sees them.
        status, _, body = raw(front, request("GET", "/open/x", [("X_Purpose_Sub", "root")]))
        assert status == 200, body
        assert [name for name, _ in echoed(body)["headers"] if "_" in name] == []


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
        status, _, body = raw(txn_front, request("GET", "/orders/1", [("Txn-Token", value)]))
        assert status == 200, body
        headers = echoed(body)["header_map"]
        assert headers["txn-token"] == [value]
        [claims] = headers["x-purpose-txn-claims"]
        assert json.loads(claims)["req_wl"] == "gateway"

    def test_a_client_txn_claims_header_is_refused(self, txn_front: int, ec_key: Key) -> None:
        forged = [("Txn-Token", txn_token(ec_key)), ("X-Purpose-Txn-Claims", '{"req_wl":"admin"}')]
        status, _, body = raw(txn_front, request("GET", "/orders/1", forged))
        assert status not in range(200, 400) and b"x-upstream" not in body.lower()

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
