"""Health tells the truth: /readyz names each check, turns degraded when a trusted issuer's JWKS server
(a real loopback one) stops answering and ready again when it is back; the audit reason tells "the
JWKS could not be fetched" from "the kid is unknown" and from "the cooldown kept us from looking";
the JWKS metrics count it all."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import exchange_form
from tests.idp import FakeIdP
from tests.server import Server, free_port
from tests.test_jwks_uri import JWKSServer
from tests.test_metrics import scrape, value, wait_for

FLAKY = "https://flaky.example.com"  # its JWKS server is stopped mid-test (cooldown 1 s)
STEADY = "https://steady.example.com"  # a long cooldown: made-up kids are not looked for again
DOWN = "https://down.example.com"  # its JWKS server never answers


def checks(server: Server) -> tuple[int, str, dict[str, dict[str, Any]]]:
    resp = httpx.get(f"{server.url}/readyz", timeout=10)
    body = resp.json()
    return resp.status_code, body["status"], {c["name"]: c for c in body["checks"]}


def config(tmp_path: Path, port: int, flaky: str, steady: str, down: str) -> Path:
    issuers = "".join(
        f'''
[[trusted_issuers]]
issuer = "{issuer}"
jwks_uri = "{uri}"
audiences = ["purpose-exchange"]
algorithms = ["ES256"]
jwks_cooldown = {cooldown}
'''
        for issuer, uri, cooldown in ((FLAKY, flaky, 1), (STEADY, steady, 600), (DOWN, down, 600))
    )
    path = tmp_path / "exchange.toml"
    path.write_text(f"""
issuer = "http://127.0.0.1:{port}"
[store]
url = "sqlite:///{tmp_path / "exchange.db"}"
{issuers}
[[clients]]
client_id = "bank-web"
purposes = ["payments.approve"]
tokens_issued_to = ["purpose-exchange"]  # the fake providers' tokens name no azp
[purposes."payments.approve"]
audience = "https://payments.internal"
""")
    return path


def test_readyz_degrades_when_an_issuers_jwks_stops_answering_and_recovers(tmp_path: Path) -> None:
    flaky_idp = FakeIdP(FLAKY, "idp_ec", "ES256")
    steady_idp = FakeIdP(STEADY, "idp_ec", "ES256")
    rotated = FakeIdP(FLAKY, "client_ec", "ES256")  # a key the flaky issuer's JWKS does not list
    flaky, steady = JWKSServer(), JWKSServer()
    flaky.keys, steady.keys = flaky_idp.jwks()["keys"], steady_idp.jwks()["keys"]
    port = free_port()
    # The third issuer's JWKS is a port nobody listens on.
    path = config(tmp_path, port, flaky.url, steady.url, f"http://127.0.0.1:{free_port()}/jwks")
    server = Server(path, port)
    try:
        server.wait_ready()  # 200: the store and the key are fine; issuers may still be degraded

        def exchange(token: str, rid: str) -> httpx.Response:
            return httpx.post(
                f"{server.url}/token", data=exchange_form(token), headers={"X-Request-Id": rid}, timeout=10
            )

        # The keys of every issuer are fetched at start, not on the first token.
        wait_for(lambda: flaky.fetches == 1 and steady.fetches == 1)
        status, overall, named = checks(server)
        assert (status, overall) == (200, "degraded")
        assert named["store"]["status"] == "ok" and named["signing_key"]["status"] == "ok"
        assert named[f"issuer {FLAKY}"]["status"] == "ok" and named[f"issuer {STEADY}"]["status"] == "ok"
        assert named[f"issuer {DOWN}"]["status"] == "down"
        assert "cannot be fetched" in named[f"issuer {DOWN}"]["detail"]

        # A token of the issuer whose keys cannot be had cannot be judged: 503, retry later (not the
        # opaque 400 that would send the user to sign in again), and the audit says why.
        down = exchange(FakeIdP(DOWN, "idp_ec", "ES256").token(), "down-1")
        assert (down.status_code, down.headers["retry-after"]) == (503, "2"), down.text
        assert down.json()["error"] == "temporarily_unavailable"
        assert "access_token" not in down.json()
        assert server.audit("down-1")["reason"] == "subject_token:jwks_unavailable"
        assert server.audit("down-1")["decision"] == "denied"

        # A made-up kid within the steady issuer's cooldown is not looked for again, and that shows.
        assert exchange(steady_idp.token(header={"kid": "made-up"}), "suppressed-1").status_code == 400
        assert server.audit("suppressed-1")["reason"] == "subject_token:unknown_kid_refetch_suppressed"
        assert steady.fetches == 1

        # The flaky issuer's JWKS server goes away. A rotated kid makes the exchange look (the 1 s
        # cooldown since its start-up fetch is over), the fetch fails: not "unknown kid".
        assert exchange(flaky_idp.token(), "flaky-ok").status_code == 200
        time.sleep(1.2)
        flaky.httpd.shutdown()
        flaky.httpd.server_close()
        assert exchange(rotated.token(), "flaky-down").status_code == 503
        assert server.audit("flaky-down")["reason"] == "subject_token:jwks_unavailable"
        status, overall, named = checks(server)
        assert (status, overall) == (200, "degraded")
        flaky_check = named[f"issuer {FLAKY}"]
        assert flaky_check["status"] == "degraded" and "the last JWKS fetch failed" in flaky_check["detail"]
        # Its keys are still fresh: its users are still served.
        assert exchange(flaky_idp.token(), "flaky-still").status_code == 200

        samples = scrape(f"{server.url}/metrics")
        assert value(samples, "purpose_exchange_jwks_fetches_total", issuer=FLAKY, result="ok") == 1
        assert value(samples, "purpose_exchange_jwks_fetches_total", issuer=FLAKY, result="error") >= 1
        assert value(samples, "purpose_exchange_jwks_refetch_suppressed_total", issuer=STEADY) == 1
        assert value(samples, "purpose_exchange_jwks_usable", issuer=DOWN) == 0
        ages = {
            dict(k)["issuer"]: v for k, v in samples["purpose_exchange_jwks_last_success_age_seconds"].items()
        }
        assert ages[STEADY] >= 0 and DOWN not in ages  # never fetched: no age to tell

        # The JWKS server comes back (same port): the background refresh notices, ready again.
        back = JWKSServer(port=flaky.httpd.server_address[1])
        back.keys = flaky_idp.jwks()["keys"] + rotated.jwks()["keys"]
        try:
            wait_for(lambda: checks(server)[2][f"issuer {FLAKY}"]["status"] == "ok")
            assert exchange(rotated.token(), "flaky-back").status_code == 200
        finally:
            back.httpd.shutdown()
            back.httpd.server_close()
    finally:
        server.stop()
        steady.httpd.shutdown()
        steady.httpd.server_close()


def test_readyz_is_unavailable_when_no_issuer_has_usable_keys(tmp_path: Path) -> None:
    port = free_port()
    nowhere = [f"http://127.0.0.1:{free_port()}/jwks" for _ in range(3)]
    server = Server(config(tmp_path, port, *nowhere), port)
    try:
        deadline = time.monotonic() + 30
        while True:  # not ready, ever: wait for the server itself to answer
            try:
                resp = httpx.get(f"{server.url}/readyz", timeout=2)
            except httpx.TransportError:
                assert time.monotonic() < deadline, server.log.read_text()[-2000:]
                time.sleep(0.2)
                continue
            body = resp.json()
            if all(c["status"] == "down" for c in body["checks"] if c["name"].startswith("issuer ")):
                break
            time.sleep(0.2)
        assert (resp.status_code, body["status"]) == (503, "unavailable")
        assert resp.headers["retry-after"]
    finally:
        server.stop()
