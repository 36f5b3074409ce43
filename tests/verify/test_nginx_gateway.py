"""The gateway behind a real nginx (Debian's package): allow, deny, and no bypass by spelling.

nginx runs the config block of docs/VERIFY.md as written (ports substituted), in front of the ambassador
tests' echo upstream, with `exchange gateway --proxy nginx` as its auth_request endpoint; the cases are
the ones every proxy must pass (tests/verify/forward_auth_cases.py). Every process listens on 127.0.0.1
only and is stopped by the fixtures. nginx is installed from Debian's archive when missing (CI runs as
root on a Debian machine); a machine that cannot install it skips, except under CI.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from joserfc.jwk import Key

from tests.verify.forward_auth_cases import (
    DOCS,
    ForwardAuthCases,
    TxnForwardAuthCases,
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


def _front(tmp_path_factory: pytest.TempPathFactory, ec_key: Key, *, txn: bool) -> Iterator[int]:
    binary = nginx_binary()
    work = tmp_path_factory.mktemp("nginx-txn-gateway" if txn else "nginx-gateway")
    with gateway_and_upstream(work, ec_key, "nginx", txn=txn) as (up_port, gw_port):
        listen = free_port()
        block = nginx.docs_gateway_block(DOCS, listen=listen, upstream=up_port, gateway=gw_port)
        front = start(nginx.argv(binary, nginx.write_config(work, block)), listen)
        try:
            yield listen
        finally:
            stop(front)


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, ec_key: Key) -> Iterator[int]:
    yield from _front(tmp_path_factory, ec_key, txn=False)


@pytest.fixture(scope="module")
def txn_front(tmp_path_factory: pytest.TempPathFactory, ec_key: Key) -> Iterator[int]:
    """The same docs block in front of a gateway that checks Txn-Tokens only (--txn-trust-domain)."""
    yield from _front(tmp_path_factory, ec_key, txn=True)


class TestNginxGateway(ForwardAuthCases):
    """Every proxy's cases. nginx answers a check's 400 (a forged header, a non-canonical path) as 500."""

    def test_underscore_headers_are_dropped_by_nginx_itself(self, front: int) -> None:
        # nginx's default `underscores_in_headers off`: neither the check nor the upstream sees them.
        status, _, body = raw(front, request("GET", "/open/x", [("X_Purpose_Sub", "root")]))
        assert status == 200, body
        assert [name for name, _ in echoed(body)["headers"] if "_" in name] == []


class TestNginxTxnTokens(TxnForwardAuthCases):
    """Every proxy's Txn-Token cases; nginx answers a refusal with its own `@purpose_403` body."""

    relays_refusal_body = False
