"""The gateway behind a real Caddy (Debian's package): allow, deny, and no bypass.

Caddy runs the site block of docs/VERIFY.md as written (port substituted; global options turn off the
admin API and automatic HTTPS and bind to loopback), in front of the echo upstream, with
`exchange gateway --proxy caddy` as its forward_auth upstream; the cases are the ones every proxy must
pass (tests/verify/forward_auth_cases.py). caddy is installed from Debian's archive when missing (CI
runs as root on a Debian machine); a machine that cannot install it skips, except under CI.
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
    identity_seen,
    raw,
    request,
    required,
    running,
    token,
)
from tests.verify.test_ambassador import ROOT, free_port

sys.path.insert(0, str(ROOT / "bench"))
from harness import caddy


def _front(tmp_path_factory: pytest.TempPathFactory, ec_key: Key, *, txn: bool) -> Iterator[int]:
    binary = required(caddy.binary(), "caddy", "apt-get install caddy")
    work = tmp_path_factory.mktemp(f"caddy-{'txn-' if txn else ''}gateway")
    with gateway_and_upstream(work, ec_key, "caddy", txn=txn) as (up_port, gw_port):
        listen = free_port()
        site = caddy.docs_block(DOCS, listen=listen, upstream=up_port, gateway=gw_port)
        argv = [binary, *caddy.write_config(work, site)]
        with running(argv, listen, work / "caddy.log", env=caddy.env(work), txn=txn):
            yield listen


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, ec_key: Key) -> Iterator[int]:
    yield from _front(tmp_path_factory, ec_key, txn=False)


@pytest.fixture(scope="module")
def txn_front(tmp_path_factory: pytest.TempPathFactory, ec_key: Key) -> Iterator[int]:
    """The same docs block in front of a gateway that checks Txn-Tokens only (--txn-trust-domain)."""
    yield from _front(tmp_path_factory, ec_key, txn=True)


class TestCaddyGateway(ForwardAuthCases):
    """Every proxy's cases, and what Caddy itself does with them."""

    def test_no_placeholder_text_reaches_the_upstream(self, front: int, ec_key: Key) -> None:
        # Caddy 2.6's copy_headers sets a header the check did not send to the text
        # "{http.reverse_proxy.header.X-Purpose-Sub}"; the docs block removes those.
        for path, auth in (("/open/x", []), ("/accounts/1", token(ec_key))):
            status, _, body = raw(front, request("GET", path, auth))
            assert status == 200, body
            values = [v for values in identity_seen(echoed(body)).values() for v in values]
            assert not [v for v in values if "{" in v and "reverse_proxy" in v], values


class TestCaddyTxnTokens(TxnForwardAuthCases):
    """Every proxy's Txn-Token cases."""
