"""Whose tokens a client may present, and whose subject a purpose token names, over real HTTP.

A client presents only subject and actor tokens issued to itself or to parties it is configured for
(peers shipped the absence of this as a CVE); `may_act` without `iss` names a subject of the subject
token's own issuer; the purpose token says which identity provider its subject belongs to (`sub_id`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from exchange.verify import PurposeTokenVerifier
from tests.conftest import exchange_form, write_config
from tests.idp import FakeIdP
from tests.server import Server, free_port

ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
CLIENTS = """
[[clients]]
client_id = "app"
purposes = ["profile.read", "delegated.read"]

[[clients]]
client_id = "backend"
tokens_issued_to = ["frontend"]
purposes = ["profile.read"]

[purposes."profile.read"]
audience = "https://profile.internal"

[purposes."delegated.read"]
audience = "https://profile.internal"

[purposes."delegated.read".delegation]
mode = "allowed"
actors = [{{ issuer = "{ec}", sub = "agent-1" }}, {{ issuer = "{rsa}", sub = "agent-1" }}]
"""


@pytest.fixture(scope="module")
def bound(tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("binding")
    port = free_port()
    extra = CLIENTS.format(ec=idp_ec.issuer, rsa=idp.issuer)
    server = Server(write_config(folder, port, idp, idp_ec, extra=extra), port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def exchange(server: Server, subject: str, *, rid: str | None = None, **params: Any) -> httpx.Response:
    form = exchange_form(subject, client_id=params.pop("client_id", "app"), scope="profile.read", **params)
    return httpx.post(f"{server.url}/token", data=form, headers={"X-Request-ID": rid or ""}, timeout=10)


def refused(server: Server, subject: str, reason: str, **params: Any) -> None:
    rid = f"bind-{time.monotonic_ns()}"
    resp = exchange(server, subject, rid=rid, **params)
    assert resp.status_code == 400, resp.text
    assert resp.json() == {"error": "invalid_request", "error_description": "subject_token is invalid"}
    assert server.audit(rid)["reason"] == reason


def claims_of(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    return dict(pyjwt.decode(resp.json()["access_token"], options={"verify_signature": False}))


class TestIssuedTo:
    @pytest.mark.parametrize(
        "claims",
        [
            {"azp": "app"},
            {"aud": ["purpose-exchange", "app"]},
            {"azp": "app", "aud": ["purpose-exchange", "app", "other"]},
        ],
        ids=["azp", "single-other-audience", "azp-beside-several-audiences"],
    )
    def test_a_token_issued_to_the_client_is_accepted(
        self, bound: Server, idp: FakeIdP, claims: dict[str, Any]
    ) -> None:
        assert claims_of(exchange(bound, idp.token(**claims)))["client_id"] == "app"

    def test_an_access_token_names_its_client_with_client_id(self, bound: Server, idp: FakeIdP) -> None:
        token = idp.token(typ="at+jwt", client_id="app")
        assert claims_of(exchange(bound, token, subject_token_type=ACCESS_TOKEN))["client_id"] == "app"
        other = idp.token(typ="at+jwt", client_id="backend")
        refused(bound, other, "subject_token:not_issued_to_client", subject_token_type=ACCESS_TOKEN)

    @pytest.mark.parametrize(
        ("claims", "reason"),
        [
            ({"azp": "backend"}, "not_issued_to_client"),
            ({}, "not_issued_to_client"),  # audienced to the exchange alone: not by default
            ({"aud": ["purpose-exchange", "backend"]}, "not_issued_to_client"),
            ({"aud": ["purpose-exchange", "app", "backend"]}, "ambiguous_party"),
            ({"azp": "app", "client_id": "backend"}, "ambiguous_party"),
            ({"azp": ["app"]}, "ambiguous_party"),
            ({"azp": ""}, "ambiguous_party"),
        ],
        ids=[
            "other-azp",
            "exchange-only",
            "other-audience",
            "two-audiences",
            "azp-vs-client_id",
            "azp-list",
            "azp-empty",
        ],
    )
    def test_a_token_issued_to_another_party_is_refused(
        self, bound: Server, idp: FakeIdP, claims: dict[str, Any], reason: str
    ) -> None:
        refused(bound, idp.token(**claims), f"subject_token:{reason}")

    def test_a_configured_party_extends_the_default(self, bound: Server, idp: FakeIdP) -> None:
        assert (
            claims_of(exchange(bound, idp.token(azp="frontend"), client_id="backend"))["client_id"]
            == "backend"
        )
        assert (
            claims_of(exchange(bound, idp.token(azp="backend"), client_id="backend"))["client_id"]
            == "backend"
        )
        # The list is the backend's, not everyone's.
        refused(bound, idp.token(azp="frontend"), "subject_token:not_issued_to_client")

    def test_actor_tokens_are_bound_the_same_way(self, bound: Server, idp: FakeIdP, idp_ec: FakeIdP) -> None:
        subject = idp.token(azp="app")
        params = {"scope": "delegated.read", "actor_token_type": "urn:ietf:params:oauth:token-type:id_token"}
        form = exchange_form(
            subject, client_id="app", actor_token=idp_ec.token(sub="agent-1", azp="app"), **params
        )
        ok = httpx.post(f"{bound.url}/token", data=form, timeout=10)
        assert claims_of(ok)["act"] == {"sub": "agent-1", "iss": idp_ec.issuer, "client_id": "app"}
        stolen = exchange_form(
            subject, client_id="app", actor_token=idp_ec.token(sub="agent-1", azp="backend"), **params
        )
        rid = f"bind-actor-{time.monotonic_ns()}"
        resp = httpx.post(f"{bound.url}/token", data=stolen, headers={"X-Request-ID": rid}, timeout=10)
        assert resp.status_code == 400
        assert resp.json() == {"error": "invalid_request", "error_description": "actor_token is invalid"}
        assert bound.audit(rid)["reason"] == "actor_token:not_issued_to_client"


class TestNamespaces:
    def test_the_purpose_token_names_the_subjects_identity_provider(
        self, bound: Server, idp: FakeIdP, idp_ec: FakeIdP
    ) -> None:
        rsa = claims_of(exchange(bound, idp.token(azp="app")))
        ec = claims_of(exchange(bound, idp_ec.token(azp="app")))
        assert rsa["sub"] == ec["sub"] == "alice"
        assert rsa["sub_id"] == {"format": "iss_sub", "iss": idp.issuer, "sub": "alice"}
        assert ec["sub_id"] == {"format": "iss_sub", "iss": idp_ec.issuer, "sub": "alice"}

    async def test_the_verifier_exposes_the_subjects_issuer(self, bound: Server, idp_ec: FakeIdP) -> None:
        token = exchange(bound, idp_ec.token(azp="app")).json()["access_token"]
        verifier = PurposeTokenVerifier(issuer=bound.url, audience="https://profile.internal")
        claims = await verifier.averify(token, purpose="profile.read")
        assert (claims.subject_issuer, claims.sub) == (idp_ec.issuer, "alice")

    def test_may_act_without_iss_names_a_subject_of_the_subject_tokens_issuer(
        self, bound: Server, idp: FakeIdP, idp_ec: FakeIdP
    ) -> None:
        params = {"scope": "delegated.read", "actor_token_type": "urn:ietf:params:oauth:token-type:id_token"}
        # alice's provider (RSA) allows ITS agent-1; agent-1 of the EC provider is someone else.
        subject = idp.token(azp="app", may_act={"sub": "agent-1"})
        impostor = exchange_form(
            subject, client_id="app", actor_token=idp_ec.token(sub="agent-1", azp="app"), **params
        )
        resp = httpx.post(f"{bound.url}/token", data=impostor, timeout=10)
        assert resp.status_code == 400 and resp.json()["denial"] == "may_act_denied", resp.text
        genuine = exchange_form(
            subject, client_id="app", actor_token=idp.token(sub="agent-1", azp="app"), **params
        )
        assert (
            claims_of(httpx.post(f"{bound.url}/token", data=genuine, timeout=10))["act"]["iss"] == idp.issuer
        )
        # Naming the other provider explicitly is what allows its agent-1.
        explicit = idp.token(azp="app", may_act={"sub": "agent-1", "iss": idp_ec.issuer})
        form = exchange_form(
            explicit, client_id="app", actor_token=idp_ec.token(sub="agent-1", azp="app"), **params
        )
        assert (
            claims_of(httpx.post(f"{bound.url}/token", data=form, timeout=10))["act"]["iss"] == idp_ec.issuer
        )
