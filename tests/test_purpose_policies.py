"""Issue 3's payment policy end to end over HTTP: details, step-up, delegation, rate limit, python rule."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from tests.conftest import exchange_form
from tests.idp import FakeIdP
from tests.server import Server, free_port

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "rules"
ACCOUNT = "FR7630006000011234567890189"
FROZEN = "FR7630006000019999999999999"
ERIN = "DE89370400440532013000"


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("bank")
    port = free_port()
    with sqlite3.connect(folder / "exchange.db") as conn:
        conn.execute(
            "CREATE TABLE accounts (number TEXT PRIMARY KEY, owner TEXT NOT NULL, frozen BOOLEAN NOT NULL)"
        )
        conn.executemany(
            "INSERT INTO accounts VALUES (?, ?, ?)",
            [(ACCOUNT, "alice", False), (FROZEN, "alice", True), (ERIN, "erin", False)],
        )
    conn.close()
    config = folder / "exchange.toml"
    config.write_text(f'''
issuer = "http://127.0.0.1:{port}"
[store]
url = "sqlite:///exchange.db"
[[trusted_issuers]]
issuer = "{idp.issuer}"
jwks_file = "{idp.write_jwks(folder / "idp.json")}"
audiences = ["purpose-exchange"]
algorithms = ["RS256"]
[[trusted_issuers]]
issuer = "{idp_ec.issuer}"
jwks_file = "{idp_ec.write_jwks(folder / "idp-ec.json")}"
audiences = ["purpose-exchange"]
algorithms = ["ES256"]
[[clients]]
client_id = "bank-web"
tokens_issued_to = ["purpose-exchange"]
purposes = ["payments.approve"]

[purposes."payments.approve"]
audience = "https://payments.internal"
ttl = 60
single_use = true
rules = [
  {{ rule = "mfa" }},
  {{ rule = "max_auth_age", seconds = 300 }},
  {{ rule = "acr", at_least = "urn:acr:2fa", order = ["urn:acr:pwd", "urn:acr:2fa", "urn:acr:hwk"] }},
  {{ rule = "claim", claim = "roles", contains = "payer" }},
  {{ rule = "detail", field = "amount", max = 10000 }},
  {{ rule = "detail", field = "currency", in = ["EUR", "USD"] }},
  {{ rule = "subject_binding", field = "owner", claim = "sub" }},
  {{ rule = "rate_limit", max = 5, per = 3600, key = "sub" }},
  {{ rule = "python", function = "mybank.rules:account_not_frozen" }},
]
[purposes."payments.approve".authorization_details.payment]
amount   = {{ type = "number", required = true, minimum = 0.01, maximum = 1000000 }}
currency = {{ type = "string", required = true, enum = ["EUR", "USD", "GBP"] }}
account  = {{ type = "string", required = true, pattern = "^[A-Z0-9]{{8,34}}$" }}
owner    = {{ type = "string", required = true }}
[purposes."payments.approve".delegation]
mode = "allowed"
actors = [ {{ issuer = "{idp_ec.issuer}", sub = "svc-batch" }} ]
''')
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")]))}
    server = Server(config, port, env=env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def payment(**overrides: Any) -> str:
    detail = {"type": "payment", "amount": 120.5, "currency": "EUR", "account": ACCOUNT, "owner": "alice"}
    detail.update(overrides)
    return json.dumps([detail])


def ask(server: Server, subject: str, **params: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/token", data=exchange_form(subject, **params), timeout=10)


def payer(idp: FakeIdP, sub: str, **claims: Any) -> str:
    return idp.token(sub=sub, roles=["payer"], **claims)


def test_granted_token_carries_exactly_the_validated_operation(bank: Server, idp: FakeIdP) -> None:
    resp = ask(bank, payer(idp, "alice"), authorization_details=payment())
    assert resp.status_code == 200, resp.text
    claims = pyjwt.decode(resp.json()["access_token"], options={"verify_signature": False})
    assert claims["authorization_details"] == [json.loads(payment())[0]]
    assert claims["single_use"] is True
    assert "roles" not in claims and "act" not in claims


@pytest.mark.parametrize(
    ("overrides", "error", "denial"),
    [
        ({"amount": 20000}, "invalid_request", "amount_too_high"),
        ({"currency": "GBP"}, "invalid_request", "currency_not_allowed"),
        ({"owner": "bob"}, "invalid_request", "subject_binding_mismatch"),
        ({"account": FROZEN}, "invalid_request", "account_frozen"),
        ({"account": "bad account!"}, "invalid_authorization_details", "invalid_detail_field"),
        ({"surprise": 1}, "invalid_authorization_details", "unknown_detail_field"),
        ({"type": "refund"}, "invalid_authorization_details", "unknown_detail_type"),
    ],
)
def test_operation_denials_name_their_code(
    bank: Server, idp: FakeIdP, overrides: dict[str, Any], error: str, denial: str
) -> None:
    resp = ask(bank, payer(idp, "alice"), authorization_details=payment(**overrides))
    assert resp.status_code == 400
    assert (resp.json()["error"], resp.json()["denial"]) == (error, denial)


def test_step_up_answers_tell_the_client_what_to_ask_the_idp_for(bank: Server, idp: FakeIdP) -> None:
    weak = ask(bank, payer(idp, "alice", acr="urn:acr:pwd"), authorization_details=payment()).json()
    assert weak["error"] == "insufficient_user_authentication"
    assert weak["denial"] == "acr_too_low" and weak["acr_values"] == "urn:acr:2fa urn:acr:hwk"
    stale = ask(
        bank, payer(idp, "alice", auth_time=int(time.time()) - 3600), authorization_details=payment()
    ).json()
    assert (stale["error"], stale["denial"], stale["max_age"]) == (
        "insufficient_user_authentication",
        "auth_too_old",
        300,
    )
    no_mfa = ask(bank, payer(idp, "alice", amr=["pwd"]), authorization_details=payment()).json()
    assert (no_mfa["error"], no_mfa["denial"]) == ("insufficient_user_authentication", "mfa_required")


def test_missing_role(bank: Server, idp: FakeIdP) -> None:
    resp = ask(bank, idp.token(sub="alice"), authorization_details=payment())
    assert resp.json()["denial"] == "claim_mismatch"


def test_delegation_yields_an_act_claim_for_an_allowed_actor(
    bank: Server, idp: FakeIdP, idp_ec: FakeIdP
) -> None:
    actor = idp_ec.token(sub="svc-batch")
    resp = ask(
        bank,
        payer(idp, "alice"),
        authorization_details=payment(),
        actor_token=actor,
        actor_token_type="urn:ietf:params:oauth:token-type:jwt",
    )
    assert resp.status_code == 200, resp.text
    claims = pyjwt.decode(resp.json()["access_token"], options={"verify_signature": False})
    assert claims["act"]["sub"] == "svc-batch" and claims["sub"] == "alice"


def test_delegation_refuses_other_actors(bank: Server, idp: FakeIdP, idp_ec: FakeIdP) -> None:
    resp = ask(
        bank,
        payer(idp, "alice"),
        authorization_details=payment(),
        actor_token=idp_ec.token(sub="intruder"),
        actor_token_type="urn:ietf:params:oauth:token-type:jwt",
    )
    assert resp.json()["denial"] == "actor_not_allowed"


def test_invalid_actor_token_is_opaque(bank: Server, idp: FakeIdP, idp_ec: FakeIdP) -> None:
    expired = idp_ec.token(sub="svc-batch", iat=int(time.time()) - 900, exp=int(time.time()) - 600)
    resp = ask(
        bank,
        payer(idp, "alice"),
        authorization_details=payment(),
        actor_token=expired,
        actor_token_type="urn:ietf:params:oauth:token-type:jwt",
    )
    assert resp.json() == {"error": "invalid_request", "error_description": "actor_token is invalid"}


def test_rate_limit_counts_only_grants_and_stops_the_sixth(bank: Server, idp: FakeIdP) -> None:
    erin = payer(idp, "erin")
    refused = ask(bank, erin, authorization_details=payment(owner="erin", account=ERIN, amount=50000))
    assert refused.json()["denial"] == "amount_too_high"  # refused before counting: not one of the 5
    answers = [ask(bank, erin, authorization_details=payment(owner="erin", account=ERIN)) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    assert answers[-1].json()["denial"] == "rate_limited"
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 3600
    # Another subject has a count of its own.
    assert ask(bank, payer(idp, "alice"), authorization_details=payment()).status_code == 200
