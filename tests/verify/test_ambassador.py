"""The ambassador against a real upstream process on a free loopback port.

Most tests drive the Ambassador ASGI app in-process (httpx ASGI transport) so they are fast; the upstream
is always a separate uvicorn process. One test also runs the ambassador itself as a process, to prove
streaming end to end through a real server.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import Key

from exchange.ambassador import Ambassador, AmbassadorConfig, build_ambassador
from exchange.verify import PurposeTokenVerifier
from exchange.verify.routes import Route, RouteTable
from exchange.verify.txn import TxnTokenVerifier
from tests.verify.conftest import (
    AUDIENCE,
    ISSUER,
    NOW,
    PURPOSE,
    TRUST_DOMAIN,
    TXN_SCOPE,
    base_claims,
    mint,
    mint_txn,
    public_jwks,
    txn_claims,
)

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_listening(port: int, process: subprocess.Popen[bytes], deadline: float = 15.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(
                f"process exited early: {process.stderr.read().decode() if process.stderr else ''}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {deadline}s")


def start(args: list[str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_listening(port, process)
    except BaseException:
        process.kill()
        process.wait(timeout=5)
        raise
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
    if process.stderr:
        process.stderr.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    port = free_port()
    process = start(
        [sys.executable, "-m", "uvicorn", "tests.verify.upstream_app:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        port,
    )  # fmt: skip
    yield f"http://127.0.0.1:{port}"
    stop(process)


ROUTES = RouteTable(
    [
        Route(prefix="/open", open=True),
        Route(prefix="/payments/", methods=frozenset({"POST"}), purpose=PURPOSE),
        Route(prefix="/", methods=frozenset({"GET", "HEAD"})),
    ]
)


@pytest.fixture
async def ambassador(upstream: str, ec_key: Key) -> AsyncIterator[Ambassador]:
    verifier = PurposeTokenVerifier(
        issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key), clock=lambda: NOW
    )
    app = Ambassador(upstream=upstream, verifier=verifier, routes=ROUTES, timeout=1.0)
    yield app
    await app.aclose()


def client_for(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://ambassador.test")


def bearer(key: Key, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(key, base_claims(**claims))}"}


def header_values(echo: dict[str, Any], name: str) -> list[str]:
    return [value for header, value in echo["headers"] if header == name]


class TestIdentity:
    async def test_verified_identity_is_forwarded(self, ambassador: Ambassador, ec_key: Key) -> None:
        async with client_for(ambassador) as client:
            response = await client.get("/accounts/1", headers=bearer(ec_key, amr=["pwd"]))
        assert response.status_code == 200
        echo = response.json()
        assert header_values(echo, "x-purpose-sub") == ["alice"]
        assert header_values(echo, "x-purpose-scope") == [PURPOSE]
        claims = json.loads(header_values(echo, "x-purpose-claims")[0])
        assert (claims["sub"], claims["aud"], claims["amr"]) == ("alice", AUDIENCE, ["pwd"])
        assert "acr" not in claims  # absent claims are left out, not sent as null
        assert header_values(echo, "x-forwarded-for") == ["203.0.113.7"]
        assert header_values(echo, "x-forwarded-host") == ["ambassador.test"]
        assert header_values(echo, "host") == [ambassador.upstream.removeprefix("http://")]
        assert response.headers["x-upstream"] == "yes"

    async def test_client_sent_identity_headers_are_stripped(
        self, ambassador: Ambassador, ec_key: Key
    ) -> None:
        forged = {"X-Purpose-Sub": "root", "x-purpose-claims": '{"sub":"root"}', "X-PURPOSE-ADMIN": "1"}
        async with client_for(ambassador) as client:
            protected = (await client.get("/accounts/1", headers={**forged, **bearer(ec_key)})).json()
            open_route = (await client.get("/open/x", headers=forged)).json()
        assert header_values(protected, "x-purpose-sub") == ["alice"]
        assert header_values(protected, "x-purpose-admin") == []
        assert json.loads(header_values(protected, "x-purpose-claims")[0])["sub"] == "alice"
        assert [name for name, _ in open_route["headers"] if name.startswith("x-purpose-")] == []

    async def test_non_ascii_subject_cannot_break_headers(self, ambassador: Ambassador, ec_key: Key) -> None:
        async with client_for(ambassador) as client:
            echo = (await client.get("/a", headers=bearer(ec_key, sub="zoë\r\nx-purpose-sub: root"))).json()
        assert header_values(echo, "x-purpose-sub") == ["zo%C3%AB%0D%0Ax-purpose-sub:%20root"]
        assert json.loads(header_values(echo, "x-purpose-claims")[0])["sub"] == "zoë\r\nx-purpose-sub: root"


class TestRefusals:
    async def test_missing_token_is_401(self, ambassador: Ambassador) -> None:
        async with client_for(ambassador) as client:
            response = await client.get("/accounts/1")
        assert (response.status_code, response.headers["www-authenticate"]) == (401, "Bearer")
        assert "x-upstream" not in response.headers

    async def test_invalid_token_is_401_invalid_token(self, ambassador: Ambassador, ec_key: Key) -> None:
        async with client_for(ambassador) as client:
            response = await client.get("/accounts/1", headers=bearer(ec_key, aud="ledger"))
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'

    async def test_other_purpose_is_403_insufficient_scope(self, ambassador: Ambassador, ec_key: Key) -> None:
        async with client_for(ambassador) as client:
            response = await client.post("/payments/1", headers=bearer(ec_key, scope="payments.read"))
        assert response.status_code == 403
        assert response.headers["www-authenticate"] == f'Bearer error="insufficient_scope", scope="{PURPOSE}"'

    async def test_unrouted_request_is_404(self, ambassador: Ambassador, ec_key: Key) -> None:
        async with client_for(ambassador) as client:
            response = await client.delete("/accounts/1", headers=bearer(ec_key))
        assert response.status_code == 404

    async def test_dot_segments_are_refused(self, ambassador: Ambassador) -> None:
        async with client_for(ambassador) as client:
            response = await client.get("/open/%2e%2e/payments/1")
        assert response.status_code == 400


class TestForwarding:
    async def test_body_query_and_raw_path_are_forwarded(self, ambassador: Ambassador, ec_key: Key) -> None:
        async with client_for(ambassador) as client:
            response = await client.post(
                "/payments/a%20b/approve?x=1&y=%2F", headers=bearer(ec_key), content=b'{"amount": 10}'
            )
        echo = response.json()
        assert echo["method"] == "POST"
        assert echo["raw_path"] == "/payments/a%20b/approve"
        assert echo["query"] == "x=1&y=%2F"
        assert echo["body"] == '{"amount": 10}'
        assert header_values(echo, "content-length") == ["14"]

    async def test_client_forwarding_headers_are_replaced_by_ours(
        self, ambassador: Ambassador, ec_key: Key
    ) -> None:
        sent = {
            "X-Forwarded-For": "198.51.100.1",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.test",
            "X-Real-IP": "10.0.0.1",
            "Forwarded": "for=10.0.0.1",
            "X_Forwarded_For": "10.0.0.2",
        }
        async with client_for(ambassador) as client:
            echo = (await client.get("/a", headers={**sent, **bearer(ec_key)})).json()
        assert header_values(echo, "x-forwarded-for") == ["203.0.113.7"]
        assert header_values(echo, "x-real-ip") == ["203.0.113.7"]
        assert header_values(echo, "x-forwarded-proto") == ["http"]
        assert header_values(echo, "x-forwarded-host") == ["ambassador.test"]
        assert header_values(echo, "forwarded") == ['for="203.0.113.7";proto=http;host="ambassador.test"']
        assert [name for name, _ in echo["headers"] if "_" in name] == []

    async def test_a_trusted_proxys_forwarding_headers_are_extended(self, upstream: str, ec_key: Key) -> None:
        from exchange.forwarding import parse_networks

        verifier = PurposeTokenVerifier(
            issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key), clock=lambda: NOW
        )
        app = Ambassador(
            upstream=upstream,
            verifier=verifier,
            routes=ROUTES,
            trusted_proxies=parse_networks(["203.0.113.0/24"]),
        )
        sent = {
            "X-Forwarded-For": "198.51.100.1",
            "X-Forwarded-Proto": "https",
            "Forwarded": "for=198.51.100.1",
        }
        try:
            async with client_for(app) as client:
                echo = (await client.get("/a", headers={**sent, **bearer(ec_key)})).json()
        finally:
            await app.aclose()
        assert header_values(echo, "x-forwarded-for") == ["198.51.100.1, 203.0.113.7"]
        assert header_values(echo, "x-real-ip") == ["198.51.100.1"]
        assert header_values(echo, "x-forwarded-proto") == ["https"]
        assert header_values(echo, "forwarded") == [
            'for=198.51.100.1, for="203.0.113.7";proto=http;host="ambassador.test"'
        ]

    async def test_upstream_cookies_are_relayed_never_kept(self, ambassador: Ambassador, ec_key: Key) -> None:
        # A proxy that kept Set-Cookie in a client-side jar would replay alice's session for the next
        # caller. The cookie must reach the caller who got it, and no one else's request upstream.
        async with client_for(ambassador) as alice:
            response = await alice.get("/set-cookie", headers=bearer(ec_key))
        assert response.headers["set-cookie"] == "session=alice-secret; Path=/"
        async with client_for(ambassador) as bob:
            echo = (await bob.get("/a", headers=bearer(ec_key, sub="bob"))).json()
        assert header_values(echo, "cookie") == []

    async def test_authorization_reaches_the_upstream(self, ambassador: Ambassador, ec_key: Key) -> None:
        headers = bearer(ec_key)
        async with client_for(ambassador) as client:
            echo = (await client.get("/a", headers=headers)).json()
        assert header_values(echo, "authorization") == [headers["Authorization"]]

    async def test_upstream_status_is_relayed_and_hop_by_hop_headers_dropped(
        self, ambassador: Ambassador, ec_key: Key
    ) -> None:
        async with client_for(ambassador) as client:
            response = await client.get("/created", headers=bearer(ec_key))
        assert response.status_code == 201
        assert "connection" not in response.headers

    async def test_encoded_body_is_relayed_untouched(self, ambassador: Ambassador, ec_key: Key) -> None:
        async with client_for(ambassador) as client:
            response = await client.get("/gzip", headers=bearer(ec_key))
        assert response.headers["content-encoding"] == "gzip"
        assert response.text == "compressed body" * 10

    async def test_health_needs_no_token_and_no_upstream(self, ec_key: Key) -> None:
        verifier = PurposeTokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key))
        app = Ambassador(upstream=f"http://127.0.0.1:{free_port()}", verifier=verifier, routes=ROUTES)
        async with client_for(app) as client:
            response = await client.get("/.ambassador/health")
        assert (response.status_code, response.json()) == (200, {"status": "ok"})


class TestUpstreamFailures:
    async def test_unreachable_upstream_is_502(self, ec_key: Key) -> None:
        verifier = PurposeTokenVerifier(
            issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key), clock=lambda: NOW
        )
        app = Ambassador(upstream=f"http://127.0.0.1:{free_port()}", verifier=verifier, routes=ROUTES)
        async with client_for(app) as client:
            response = await client.get("/a", headers=bearer(ec_key))
        await app.aclose()
        assert (response.status_code, response.json()) == (502, {"error": "upstream_unavailable"})

    async def test_slow_upstream_is_504_within_the_timeout(self, ambassador: Ambassador, ec_key: Key) -> None:
        started = time.monotonic()
        async with client_for(ambassador) as client:
            response = await client.get("/slow", headers=bearer(ec_key))
        assert (response.status_code, response.json()) == (504, {"error": "upstream_timeout"})
        assert time.monotonic() - started < 2.5  # the 1 s timeout, not the upstream's 3 s


def test_ambassador_process_streams_responses(upstream: str, tmp_path: Path, ec_key: Key) -> None:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(public_jwks(ec_key)))
    routes_file = tmp_path / "routes.toml"
    routes_file.write_text(f'[[route]]\nprefix = "/stream"\npurpose = "{PURPOSE}"\n')
    port = free_port()
    process = start(
        [sys.executable, "-m", "exchange.cli.ambassador", "--listen", f"127.0.0.1:{port}",
         "--upstream", upstream, "--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-file", str(jwks_file),
         "--routes", str(routes_file), "--server", "uvicorn"],
        port,
    )  # fmt: skip
    try:
        now = int(time.time())
        token = mint(ec_key, base_claims(iat=now, exp=now + 60))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert client.get("/.ambassador/health").json() == {"status": "ok"}
            assert client.get("/stream").status_code == 401
            started = time.monotonic()
            arrivals = []
            with client.stream("GET", "/stream", headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    arrivals.append((line, time.monotonic() - started))
        assert [line for line, _ in arrivals] == ["chunk0", "chunk1", "chunk2"]
        # The first chunk arrives while the upstream is still pausing between chunks: not buffered.
        assert arrivals[-1][1] - arrivals[0][1] > 0.4
    finally:
        stop(process)


class TestLogging:
    async def test_one_canonical_line_per_request_without_the_token(
        self, ambassador: Ambassador, ec_key: Key
    ) -> None:
        from structlog.testing import capture_logs

        token = mint(ec_key, base_claims())
        with capture_logs() as logs:
            async with client_for(ambassador) as client:
                await client.get("/accounts/1", headers={"Authorization": f"Bearer {token}"})
                await client.post("/payments/1", headers={"Authorization": f"Bearer {token}x"})
        lines = [entry for entry in logs if entry["event"] == "ambassador_request"]
        assert [(line["status"], line["reason"], line["sub"]) for line in lines] == [
            (200, None, "alice"),
            (401, "malformed", None),  # a stray "x" leaves the signature non-canonical base64url
        ]
        assert token not in repr(logs)


class TestTxnTokens:
    """Inside a trust domain: the ambassador checks the Txn-Token header (draft §12) and forwards it as is."""

    @pytest.fixture
    async def txn_ambassador(self, upstream: str, ec_key: Key) -> AsyncIterator[Ambassador]:
        verifier = TxnTokenVerifier(
            trust_domain=TRUST_DOMAIN, issuer=ISSUER, jwks=public_jwks(ec_key), clock=lambda: NOW
        )
        routes = RouteTable([Route(prefix="/open", open=True), Route(prefix="/orders", purpose=TXN_SCOPE),
                             Route(prefix="/")])  # fmt: skip
        app = Ambassador(upstream=upstream, verifier=None, routes=routes, txn_verifier=verifier,
                         txn_routes=routes, timeout=1.0)  # fmt: skip
        yield app
        await app.aclose()

    async def test_the_txn_token_is_verified_exposed_and_forwarded_unmodified(
        self, txn_ambassador: Ambassador, ec_key: Key
    ) -> None:
        token = mint_txn(ec_key)
        forged = {"X-Purpose-Txn-Claims": '{"req_wl":"admin"}'}
        async with client_for(txn_ambassador) as client:
            response = await client.get("/orders/1", headers={"Txn-Token": token, **forged})
        assert response.status_code == 200
        echo = response.json()
        assert header_values(echo, "txn-token") == [token]
        [exposed] = header_values(echo, "x-purpose-txn-claims")
        claims = json.loads(exposed)
        assert (claims["txn"], claims["req_wl"]) == ("97053963-771d-49cc-a4e3-20aad399c312", "gateway")
        assert (
            claims["tctx"] == {"item": "sku-42", "quantity": 3}
            and claims["rctx"]["req_ip"] == "69.151.72.123"
        )

    @pytest.mark.parametrize(
        ("headers", "status", "error"),
        [
            ({}, 403, "invalid_txn_token"),
            ({"Txn-Token": "x.y.z"}, 403, "invalid_txn_token"),
        ],
    )
    async def test_refusals_never_reach_the_upstream(
        self, txn_ambassador: Ambassador, headers: dict[str, str], status: int, error: str
    ) -> None:
        async with client_for(txn_ambassador) as client:
            response = await client.get("/orders/1", headers=headers)
        assert (response.status_code, response.json()) == (status, {"error": error})
        assert "x-upstream" not in response.headers and "www-authenticate" not in response.headers

    async def test_scope_wrong_domain_and_two_tokens(self, txn_ambassador: Ambassador, ec_key: Key) -> None:
        async with client_for(txn_ambassador) as client:
            other_scope = await client.get(
                "/orders/1", headers={"Txn-Token": mint_txn(ec_key, txn_claims(scope="x"))}
            )
            elsewhere = await client.get(
                "/a", headers={"Txn-Token": mint_txn(ec_key, txn_claims(aud="other.example"))}
            )
            two = await client.get(
                "/a", headers=[("Txn-Token", mint_txn(ec_key)), ("Txn-Token", mint_txn(ec_key))]
            )
            anywhere = await client.get("/a", headers={"Txn-Token": mint_txn(ec_key, txn_claims(scope="x"))})
            open_route = await client.get("/open/x")
        assert (other_scope.status_code, other_scope.json()) == (403, {"error": "insufficient_scope"})
        assert (elsewhere.status_code, elsewhere.json()) == (403, {"error": "invalid_txn_token"})
        assert (two.status_code, two.json()) == (400, {"error": "invalid_request"})
        assert anywhere.status_code == open_route.status_code == 200

    async def test_both_tokens_when_both_are_configured(self, upstream: str, ec_key: Key) -> None:
        purpose = PurposeTokenVerifier(
            issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key), clock=lambda: NOW
        )
        txn = TxnTokenVerifier(
            trust_domain=TRUST_DOMAIN, issuer=ISSUER, jwks=public_jwks(ec_key), clock=lambda: NOW
        )
        app = Ambassador(upstream=upstream, verifier=purpose, routes=ROUTES, txn_verifier=txn, timeout=1.0)
        try:
            async with client_for(app) as client:
                only_bearer = await client.get("/a", headers=bearer(ec_key))
                both = await client.get("/a", headers={**bearer(ec_key), "Txn-Token": mint_txn(ec_key)})
        finally:
            await app.aclose()
        assert (only_bearer.status_code, only_bearer.json()) == (403, {"error": "invalid_txn_token"})
        echo = both.json()
        assert header_values(echo, "x-purpose-sub") == ["alice"] and header_values(
            echo, "x-purpose-txn-claims"
        )

    def test_the_config_builds_a_txn_only_ambassador(self, tmp_path: Path, ec_key: Key) -> None:
        jwks = tmp_path / "jwks.json"
        jwks.write_text(json.dumps(public_jwks(ec_key)))
        app = build_ambassador(AmbassadorConfig(upstream="http://127.0.0.1:9", issuer=ISSUER,
                                                jwks_file=str(jwks), txn_trust_domain=TRUST_DOMAIN,
                                                txn_scope=TXN_SCOPE))  # fmt: skip
        assert app.verifier is None and app.txn_verifier is not None
        with pytest.raises(ValueError):
            build_ambassador(
                AmbassadorConfig(upstream="http://127.0.0.1:9", issuer=ISSUER, jwks_file=str(jwks))
            )
