"""Transaction Tokens at the token endpoint (draft-ietf-oauth-transaction-tokens-10), over real HTTP
against a running `exchange serve`: the request (§11.1), each kind of subject (§11.2), the TTS's
decisions (§11.3), the response (§11.4), the token (§9), replacement (§13.15), scope (§13.6, §13.14)
and the audit trail (§13.2). Every refusal asserts its exact error and denial."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import msgspec
import pytest

from exchange.clients import hash_secret
from exchange.verify import VerificationError
from exchange.verify.txn import TxnTokenVerifier
from tests.conftest import basic, exchange_form
from tests.idp import FakeIdP
from tests.server import Server, free_port

TRUST_DOMAIN = "trust-domain.example"
SECRET = "workload-secret-0123456789"
TXN = "urn:ietf:params:oauth:token-type:txn_token"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
SELF_SIGNED = "urn:ietf:params:oauth:token-type:self_signed"
UNSIGNED = "urn:ietf:params:oauth:token-type:unsigned_json"
ORDER = {"item": "sku-42", "quantity": 3, "customer": "alice"}
CONTEXT = {"req_ip": "69.151.72.123", "authn": "face"}


@pytest.fixture(scope="module")
def tts(tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("tts")
    port = free_port()
    scheduler_keys = FakeIdP("scheduler", "client_b_ec", "ES256").write_jwks(folder / "scheduler.json")
    hashed = hash_secret(SECRET)
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

[[clients]]
client_id = "gateway"
auth_method = "client_secret_basic"
secret_hash = "{hashed}"
purposes = ["orders.place", "orders.login", "payments.approve"]
tokens_issued_to = ["shop-app"]            # the outside app whose users' tokens the gateway receives
[[clients]]
client_id = "orders"
auth_method = "client_secret_basic"
secret_hash = "{hashed}"
purposes = ["orders.place", "orders.fulfil", "orders.audit"]
[[clients]]
client_id = "scheduler"
auth_method = "client_secret_basic"
secret_hash = "{hashed}"
jwks_file = "{scheduler_keys}"
purposes = ["reports.nightly", "orders.place"]
[[clients]]
client_id = "ingest"
auth_method = "client_secret_basic"
secret_hash = "{hashed}"
purposes = ["reports.nightly"]
[[clients]]
client_id = "bank-web"
purposes = ["orders.place"]

[txn_tokens]
trust_domain = "{TRUST_DOMAIN}"
ttl = 300
max_replacements = 2
[[txn_tokens.workloads]]
client_id = "gateway"
subject_token_types = ["access_token", "id_token"]
[[txn_tokens.workloads]]
client_id = "orders"
subject_token_types = ["txn_token"]
[[txn_tokens.workloads]]
client_id = "scheduler"
subject_token_types = ["self_signed"]
[[txn_tokens.workloads]]
client_id = "ingest"
subject_token_types = ["unsigned_json"]
subject_namespace = "{idp.issuer}"

[purposes."orders.place"]
rules = [
  {{ rule = "detail", field = "quantity", max = 50 }},
  {{ rule = "subject_binding", field = "customer", claim = "sub" }},
]
[purposes."orders.place".authorization_details.order]
item = {{ type = "string", required = true, pattern = "^sku-[0-9]+$" }}
quantity = {{ type = "integer", required = true, minimum = 1, maximum = 1000 }}
customer = {{ type = "string", required = true }}
warehouse = {{ type = "string" }}
[purposes."orders.place".txn_token]
request_details = "order"
subject_scopes = ["orders"]
[purposes."orders.place".txn_token.request_context]
req_ip = {{ type = "string", pattern = "^[0-9.]+$" }}
authn = {{ type = "string", enum = ["face", "pwd", "mfa"] }}
warehouse_host = {{ type = "string" }}

[purposes."orders.fulfil"]
[purposes."orders.fulfil".authorization_details.order]
item = {{ type = "string", required = true }}
quantity = {{ type = "integer", required = true }}
customer = {{ type = "string", required = true }}
warehouse = {{ type = "string", enum = ["north", "south"] }}
[purposes."orders.fulfil".txn_token]
request_details = "order"
replaces = ["orders.place"]
ttl = 120

[purposes."orders.audit"]
[purposes."orders.audit".txn_token]

[purposes."orders.login"]
[purposes."orders.login".txn_token]
unscoped_subjects = "purpose"

[purposes."reports.nightly"]
rules = [{{ rule = "claim", claim = "sub", in = ["alice", "report-bot"] }}]
[purposes."reports.nightly".txn_token]
unscoped_subjects = "purpose"

[purposes."payments.approve"]
audience = "https://payments.internal"
''')
    server = Server(config, port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def ask(
    server: Server,
    subject: str,
    *,
    workload: str = "gateway",
    request_id: str | None = None,
    **params: Any,
) -> httpx.Response:
    form = exchange_form(
        subject,
        client_id=None,
        requested_token_type=TXN,
        audience=TRUST_DOMAIN,
        subject_token_type=ACCESS,
        scope="orders.place",
        request_details=json.dumps(ORDER),
        request_context=json.dumps(CONTEXT),
    )
    for name, value in params.items():
        if value is None:
            form.pop(name, None)
        else:
            form[name] = value
    headers = basic(workload, SECRET)
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    return httpx.post(f"{server.url}/token", data=form, headers=headers, timeout=10)


def user_token(idp: FakeIdP, **claims: Any) -> str:
    """An access token the gateway received from outside (issued to the shop's app), scoped for orders."""
    claims.setdefault("scope", "orders profile")
    claims.setdefault("client_id", "shop-app")
    return idp.token(typ="at+jwt", **claims)


def id_token(idp: FakeIdP) -> str:
    return idp.token(azp="shop-app")


def granted(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def refused(resp: httpx.Response, status: int, error: str, denial: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == error, body
    assert body.get("denial") == denial, body
    return body  # type: ignore[no-any-return]


def payload(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))  # type: ignore[no-any-return]


def audit(server: Server, request_id: str) -> dict[str, Any]:
    return server.audit(request_id)


def verifier(server: Server, **options: Any) -> TxnTokenVerifier:
    return TxnTokenVerifier(
        trust_domain=TRUST_DOMAIN,
        issuer=server.url,
        jwks_uri=f"{server.url}/.well-known/jwks.json",
        **options,
    )


class TestIssuance:
    def test_a_gateway_gets_a_txn_token_for_an_inbound_access_token(self, tts: Server, idp: FakeIdP) -> None:
        body = granted(ask(tts, user_token(idp), request_id="txn-grant-1"))
        # §11.4: token_type N_A, the Txn-Token type, never a refresh token.
        assert body["token_type"] == "N_A"
        assert body["issued_token_type"] == TXN
        assert "refresh_token" not in body and body["scope"] == "orders.place"
        token = body["access_token"]
        # An independent JWT library, keys from the served JWKS.
        key = pyjwt.PyJWKClient(f"{tts.url}/.well-known/jwks.json").get_signing_key_from_jwt(token)
        claims = pyjwt.decode(token, key.key, algorithms=["ES256"], audience=TRUST_DOMAIN, issuer=tts.url)
        header = pyjwt.get_unverified_header(token)
        assert header["typ"] == "txntoken+jwt" and header["kid"] == key.key_id  # §9.1
        assert set(claims) == {
            "iss", "iat", "aud", "exp", "txn", "sub", "scope", "req_wl", "jti", "sub_id", "tctx", "rctx",
        }  # fmt: skip
        assert claims["aud"] == TRUST_DOMAIN and claims["scope"] == "orders.place"
        assert claims["req_wl"] == "gateway"
        # §9.2: sub unique within the trust domain: the subject's issuer namespaces it.
        assert claims["sub"] == f"{idp.issuer} alice"
        assert claims["sub_id"] == {"format": "iss_sub", "iss": idp.issuer, "sub": "alice"}
        assert claims["tctx"] == ORDER and claims["rctx"] == CONTEXT
        assert 0 < claims["exp"] - claims["iat"] <= 300
        # §13.4: nothing of the inbound access token travels in the Txn-Token.
        assert "profile" not in json.dumps(claims) and "amr" not in claims
        record = audit(tts, "txn-grant-1")
        assert (record["decision"], record["txn"], record["jti"]) == ("granted", claims["txn"], claims["jti"])
        assert (record["client_id"], record["issuer"], record["sub"]) == ("gateway", idp.issuer, "alice")
        assert (record["purpose"], record["audience"]) == ("orders.place", TRUST_DOMAIN)

    async def test_the_txn_token_passes_our_txn_token_verifier(self, tts: Server, idp: FakeIdP) -> None:
        token = granted(ask(tts, user_token(idp)))["access_token"]
        claims = await verifier(tts).averify(token, scope="orders.place")
        assert claims.req_wl == "gateway" and claims.requesting_workloads == ("gateway",)
        assert claims.tctx == ORDER and claims.rctx == CONTEXT and claims.subject_issuer == idp.issuer
        with pytest.raises(VerificationError) as wrong:
            await verifier(tts).averify(token, scope="orders.fulfil")
        assert wrong.value.reason == "wrong_purpose"
        other_domain = TxnTokenVerifier(
            trust_domain="elsewhere.example", issuer=tts.url, jwks_uri=f"{tts.url}/.well-known/jwks.json"
        )
        with pytest.raises(VerificationError) as outside:
            await other_domain.averify(token)
        assert outside.value.reason == "wrong_audience"  # §9.2: never accepted outside its trust domain

    def test_every_transaction_gets_its_own_txn(self, tts: Server, idp: FakeIdP) -> None:
        first = payload(granted(ask(tts, user_token(idp)))["access_token"])
        second = payload(granted(ask(tts, user_token(idp)))["access_token"])
        assert first["txn"] != second["txn"] and first["jti"] != second["jti"]

    def test_the_txn_token_never_outlives_the_inbound_token(self, tts: Server, idp: FakeIdP) -> None:
        exp = int(time.time()) + 40
        claims = payload(granted(ask(tts, user_token(idp, exp=exp)))["access_token"])
        assert claims["exp"] == exp

    def test_metadata_advertises_the_txn_token_profile(self, tts: Server) -> None:
        meta = httpx.get(f"{tts.url}/.well-known/oauth-authorization-server").json()
        assert TXN in meta["requested_token_types_supported"]
        assert {SELF_SIGNED, UNSIGNED, TXN, ACCESS} <= set(meta["subject_token_types_supported"])


class TestContext:
    def test_undeclared_request_context_members_are_not_asserted(self, tts: Server, idp: FakeIdP) -> None:
        offered = {**CONTEXT, "user_agent": "curl/8", "admin": True}
        claims = payload(
            granted(ask(tts, user_token(idp), request_context=json.dumps(offered)))["access_token"]
        )
        assert claims["rctx"] == CONTEXT

    def test_a_declared_request_context_member_must_fit_its_spec(self, tts: Server, idp: FakeIdP) -> None:
        bad = json.dumps({"req_ip": "not an address"})
        body = refused(
            ask(tts, user_token(idp), request_context=bad), 400, "invalid_request", "invalid_detail_field"
        )
        assert body["error_description"] == "request_context.req_ip must match the accepted format"

    def test_no_request_context_means_no_rctx(self, tts: Server, idp: FakeIdP) -> None:
        claims = payload(granted(ask(tts, user_token(idp), request_context=None))["access_token"])
        assert "rctx" not in claims

    @pytest.mark.parametrize(
        ("details", "denial", "description"),
        [
            ({**ORDER, "discount": 100}, "unknown_detail_field", "request_details (order) has a field that is not accepted"),  # noqa: E501
            ({"item": "sku-42", "customer": "alice"}, "detail_field_missing", "request_details (order) needs quantity"),  # noqa: E501
            ({**ORDER, "item": "free stuff"}, "invalid_detail_field", "request_details.item must match the accepted format"),  # noqa: E501
        ],
    )  # fmt: skip
    def test_request_details_are_validated_as_the_purposes_details_type(
        self, tts: Server, idp: FakeIdP, details: dict[str, Any], denial: str, description: str
    ) -> None:
        body = refused(
            ask(tts, user_token(idp), request_details=json.dumps(details)), 400, "invalid_request", denial
        )
        assert body["error_description"] == description

    @pytest.mark.parametrize(
        ("raw", "denial"),
        [("[1, 2]", "request_details_malformed"), ('{"a": {"b": 1}}', "request_details_malformed"),
         (json.dumps({"item": "x" * 5000}), "request_details_too_large")],
    )  # fmt: skip
    def test_request_details_are_bounded_like_authorization_details(
        self, tts: Server, idp: FakeIdP, raw: str, denial: str
    ) -> None:
        refused(ask(tts, user_token(idp), request_details=raw), 400, "invalid_request", denial)

    def test_request_details_are_required_where_the_purpose_maps_them(
        self, tts: Server, idp: FakeIdP
    ) -> None:
        refused(
            ask(tts, user_token(idp), request_details=None), 400, "invalid_request", "request_details_missing"
        )

    def test_a_purpose_without_a_details_type_takes_none(self, tts: Server, idp: FakeIdP) -> None:
        resp = ask(
            tts, id_token(idp), scope="orders.login", subject_token_type=ID_TOKEN, request_details=None
        )
        assert "tctx" not in payload(granted(resp)["access_token"])
        refused(
            ask(tts, id_token(idp), scope="orders.login", subject_token_type=ID_TOKEN),
            400,
            "invalid_request",
            "request_details_not_accepted",
        )

    def test_the_purposes_rules_run_on_tctx(self, tts: Server, idp: FakeIdP) -> None:
        too_many = json.dumps({**ORDER, "quantity": 51})
        refused(
            ask(tts, user_token(idp), request_details=too_many), 400, "invalid_request", "quantity_too_high"
        )
        for_bob = json.dumps({**ORDER, "customer": "bob"})
        refused(
            ask(tts, user_token(idp), request_details=for_bob),
            400,
            "invalid_request",
            "subject_binding_mismatch",
        )


class TestRequest:
    def test_the_audience_is_required(self, tts: Server, idp: FakeIdP) -> None:
        body = refused(ask(tts, user_token(idp), audience=None), 400, "invalid_request")
        assert body["error_description"] == "audience is required for a Txn-Token: name the trust domain"

    @pytest.mark.parametrize("audience", ["other.example", "https://payments.internal"])
    def test_the_audience_is_the_trust_domain(self, tts: Server, idp: FakeIdP, audience: str) -> None:
        refused(ask(tts, user_token(idp), audience=audience), 400, "invalid_target")

    def test_a_client_that_is_not_a_workload_is_refused(self, tts: Server, idp: FakeIdP) -> None:
        form = exchange_form(
            user_token(idp),
            requested_token_type=TXN,
            audience=TRUST_DOMAIN,
            subject_token_type=ACCESS,
            scope="orders.place",
            client_id="bank-web",
        )
        resp = httpx.post(f"{tts.url}/token", data=form, headers={"X-Request-ID": "txn-public"})
        refused(resp, 400, "unauthorized_client")
        assert audit(tts, "txn-public")["reason"] == "not_a_txn_workload"

    def test_a_workload_presents_only_its_subject_kinds(self, tts: Server, idp: FakeIdP) -> None:
        resp = ask(tts, user_token(idp), workload="orders", request_id="txn-kind")
        refused(resp, 400, "unauthorized_client")
        assert audit(tts, "txn-kind")["reason"] == "subject_token_type_not_allowed:access_token"

    def test_a_purpose_must_offer_txn_tokens(self, tts: Server, idp: FakeIdP) -> None:
        body = refused(ask(tts, user_token(idp), scope="payments.approve"), 400, "invalid_request")
        assert body["error_description"] == "this purpose does not issue Txn-Tokens"

    def test_a_purpose_of_txn_tokens_only_issues_no_purpose_token(self, tts: Server, idp: FakeIdP) -> None:
        resp = ask(
            tts, user_token(idp), requested_token_type=None, request_details=None, request_context=None
        )
        refused(resp, 400, "invalid_target")

    def test_actor_tokens_and_authorization_details_have_no_place(self, tts: Server, idp: FakeIdP) -> None:
        refused(
            ask(tts, user_token(idp), actor_token=idp.token(), actor_token_type=ID_TOKEN),
            400,
            "invalid_request",
        )
        refused(ask(tts, user_token(idp), authorization_details=json.dumps([{"type": "order", **ORDER}])),
                400, "invalid_request")  # fmt: skip

    @pytest.mark.parametrize("kind", ["urn:ietf:params:oauth:token-type:refresh_token", "urn:x:saml"])
    def test_unsupported_subject_types(self, tts: Server, idp: FakeIdP, kind: str) -> None:
        # §13.3: a refresh token never requests a Txn-Token.
        body = refused(ask(tts, user_token(idp), subject_token_type=kind), 400, "invalid_request")
        assert body["error_description"] == "unsupported subject_token_type"

    def test_a_bad_inbound_token_is_opaque(self, tts: Server, idp: FakeIdP) -> None:
        resp = ask(tts, user_token(idp, exp=int(time.time()) - 100), request_id="txn-expired-at")
        body = refused(resp, 400, "invalid_request")
        assert body["error_description"] == "subject_token is invalid"
        assert audit(tts, "txn-expired-at")["reason"] == "subject_token:expired"  # §6

    def test_without_txn_tokens_configured_the_type_is_unsupported(
        self, server: Server, idp: FakeIdP
    ) -> None:
        form = exchange_form(idp.token(), requested_token_type=TXN, audience=TRUST_DOMAIN)
        body = refused(httpx.post(f"{server.url}/token", data=form), 400, "invalid_request")
        assert body["error_description"] == "unsupported requested_token_type"


class TestSubjectScope:
    def test_the_subjects_scope_must_cover_the_purpose(self, tts: Server, idp: FakeIdP) -> None:
        resp = ask(tts, user_token(idp, scope="profile payments"))
        refused(resp, 400, "invalid_scope", "subject_scope_exceeded")  # §13.6

    def test_a_subject_of_unknown_scope_is_refused(self, tts: Server, idp: FakeIdP) -> None:
        resp = ask(tts, id_token(idp), subject_token_type=ID_TOKEN)  # an ID token has no scope
        refused(resp, 400, "invalid_scope", "subject_scope_unknown")  # §13.14
        weird = ask(tts, user_token(idp, scope={"orders": True}))
        refused(weird, 400, "invalid_scope", "subject_scope_unknown")

    def test_scope_as_a_list_of_strings_counts(self, tts: Server, idp: FakeIdP) -> None:
        assert granted(ask(tts, user_token(idp, scope=["orders", "profile"])))

    def test_a_purpose_may_derive_an_unknown_scope_from_its_own_rules(
        self, tts: Server, idp: FakeIdP
    ) -> None:
        resp = ask(
            tts, id_token(idp), subject_token_type=ID_TOKEN, scope="orders.login", request_details=None
        )
        assert payload(granted(resp)["access_token"])["scope"] == "orders.login"


class TestSelfSigned:
    def scheduler(self, tts: Server, **claims: Any) -> str:
        signer = FakeIdP("scheduler", "client_b_ec", "ES256", audience=tts.url)
        header = claims.pop("header", None)
        key_name = claims.pop("key_name", None)
        key = FakeIdP("x", key_name, "ES256").key if key_name else None
        return signer.token(header=header, key=key, sub=claims.pop("sub", "report-bot"), **claims)

    def ask_self_signed(self, tts: Server, token: str, request_id: str | None = None) -> httpx.Response:
        return ask(tts, token, workload="scheduler", subject_token_type=SELF_SIGNED, scope="reports.nightly",
                   request_details=None, request_id=request_id)  # fmt: skip

    def test_a_workload_starts_a_transaction_with_a_self_signed_jwt(self, tts: Server) -> None:
        claims = payload(granted(self.ask_self_signed(tts, self.scheduler(tts)))["access_token"])
        # The workload's own namespace: its subjects are not any identity provider's users.
        assert claims["sub"] == "scheduler report-bot" and claims["req_wl"] == "scheduler"
        assert claims["sub_id"] == {"format": "iss_sub", "iss": "scheduler", "sub": "report-bot"}

    @pytest.mark.parametrize(
        ("claims", "reason"),
        [
            ({"key_name": "attacker_ec"}, "subject_token:bad_signature"),
            ({"key_name": "attacker_ec", "header": {"kid": "attacker"}}, "subject_token:unknown_kid"),
            ({"iss": "orders"}, "subject_token:issuer_is_not_the_requesting_workload"),
            ({"aud": "purpose-exchange"}, "subject_token:wrong_audience"),
            ({"exp": int(time.time()) - 120}, "subject_token:expired"),
            ({"iat": int(time.time()) - 3000}, "subject_token:lifetime_too_long"),
            ({"iat": None}, "subject_token:missing_iat_or_exp"),
            ({"sub": ""}, "subject_token:missing_sub"),
            ({"header": {"typ": "txntoken+jwt"}}, "subject_token:wrong_type"),
            ({"header": {"typ": "at+jwt"}}, "subject_token:wrong_type"),
        ],
    )
    def test_self_signed_subjects_are_checked(self, tts: Server, claims: dict[str, Any], reason: str) -> None:
        rid = f"txn-self-{abs(hash(reason + json.dumps(claims, sort_keys=True, default=str))) % 10**8}"
        resp = self.ask_self_signed(tts, self.scheduler(tts, **claims), request_id=rid)
        body = refused(resp, 400, "invalid_request")
        assert body["error_description"] == "subject_token is invalid"
        assert audit(tts, rid)["reason"] == reason

    def test_the_keys_are_the_authenticated_workloads_not_the_tokens(self, tts: Server) -> None:
        # Signed by the scheduler's key, but presented by another workload: never verified with it.
        token = self.scheduler(tts, iss="ingest")
        resp = ask(tts, token, workload="ingest", subject_token_type=SELF_SIGNED, scope="reports.nightly",
                   request_details=None)  # fmt: skip
        refused(resp, 400, "unauthorized_client")

    def test_the_purposes_rules_see_the_self_signed_claims(self, tts: Server) -> None:
        resp = self.ask_self_signed(tts, self.scheduler(tts, sub="mallory"))
        refused(resp, 400, "invalid_request", "claim_mismatch")


class TestUnsignedJSON:
    def ask_unsigned(self, tts: Server, subject: Any, **params: Any) -> httpx.Response:
        text = subject if isinstance(subject, str) else json.dumps(subject)
        return ask(tts, text, workload="ingest", subject_token_type=UNSIGNED, scope="reports.nightly",
                   request_details=None, **params)  # fmt: skip

    def test_a_configured_workload_names_a_subject_in_its_namespace(self, tts: Server, idp: FakeIdP) -> None:
        claims = payload(granted(self.ask_unsigned(tts, {"sub": "alice", "note": "nightly"}))["access_token"])
        assert claims["sub"] == f"{idp.issuer} alice" and claims["req_wl"] == "ingest"

    def test_only_where_configured(self, tts: Server) -> None:
        resp = ask(tts, json.dumps({"sub": "alice"}), subject_token_type=UNSIGNED, scope="orders.place")
        refused(resp, 400, "unauthorized_client")

    @pytest.mark.parametrize(
        ("subject", "reason"),
        [
            ('{"sub": "alice", "sub": "admin"}', "subject_token:duplicate_member"),
            ('["alice"]', "subject_token:malformed"),
            ({"name": "alice"}, "subject_token:missing_sub"),
            ({"sub": "alice", "exp": int(time.time()) - 120}, "subject_token:expired"),
            ({"sub": "alice", "exp": "tomorrow"}, "subject_token:bad_numeric_date"),
            ({"sub": "alice", "pad": "x" * 9000}, "subject_token:oversized"),
        ],
    )
    def test_the_object_is_read_strictly(self, tts: Server, subject: Any, reason: str) -> None:
        rid = f"txn-unsigned-{reason.rsplit(':', 1)[1]}"
        body = refused(self.ask_unsigned(tts, subject, request_id=rid), 400, "invalid_request")
        assert body["error_description"] == "subject_token is invalid"
        assert audit(tts, rid)["reason"] == reason


class TestReplacement:
    def original(self, tts: Server, idp: FakeIdP, **claims: Any) -> str:
        return granted(ask(tts, user_token(idp, **claims)))["access_token"]  # type: ignore[no-any-return]

    def replace(self, tts: Server, token: str, **params: Any) -> httpx.Response:
        params.setdefault("scope", "orders.fulfil")
        params.setdefault("request_details", json.dumps({"warehouse": "north"}))
        params.setdefault("request_context", None)
        return ask(tts, token, workload="orders", subject_token_type=TXN, **params)

    def test_a_replacement_keeps_txn_sub_and_aud_and_the_chain(self, tts: Server, idp: FakeIdP) -> None:
        token = self.original(tts, idp)
        before = payload(token)
        resp = self.replace(tts, token, request_id="txn-replace-1")
        after = payload(granted(resp)["access_token"])
        assert granted(resp)["token_type"] == "N_A"
        for name in ("txn", "sub", "aud", "sub_id"):
            assert after[name] == before[name]  # §13.15 MUST NOT modify txn, sub, aud
        assert after["req_wl"] == "gateway,orders"  # the call chain of requesters, in order
        assert after["scope"] == "orders.fulfil" and after["jti"] != before["jti"]
        assert after["tctx"] == {**ORDER, "warehouse": "north"}  # only added to
        assert after["rctx"] == before["rctx"]
        assert after["exp"] <= before["exp"]  # never outlives what it replaces
        record = audit(tts, "txn-replace-1")
        assert (record["txn"], record["client_id"], record["sub"]) == (before["txn"], "orders", "alice")

    async def test_a_replacement_verifies_downstream_with_its_chain(self, tts: Server, idp: FakeIdP) -> None:
        replaced = granted(self.replace(tts, self.original(tts, idp)))["access_token"]
        verified = await verifier(tts).averify(replaced, scope="orders.fulfil")
        assert verified.requesting_workloads == ("gateway", "orders") and verified.replacements == 1

    def test_the_same_purpose_may_replace_and_may_add_context(self, tts: Server, idp: FakeIdP) -> None:
        token = self.original(tts, idp)
        resp = self.replace(
            tts, token, scope="orders.place", request_details=None,
            request_context=json.dumps({"warehouse_host": "wh-2"}),
        )  # fmt: skip
        claims = payload(granted(resp)["access_token"])
        assert claims["rctx"] == {**CONTEXT, "warehouse_host": "wh-2"} and claims["tctx"] == ORDER

    def test_a_replacement_never_changes_an_asserted_value(self, tts: Server, idp: FakeIdP) -> None:
        token = self.original(tts, idp)
        changed = json.dumps({"quantity": 40})
        refused(
            self.replace(tts, token, request_details=changed), 400, "invalid_request", "txn_context_conflict"
        )
        same = json.dumps({"quantity": ORDER["quantity"]})
        assert granted(self.replace(tts, token, request_details=same))
        moved = json.dumps({"req_ip": "10.0.0.1"})
        resp = self.replace(tts, token, scope="orders.place", request_details=None, request_context=moved)
        refused(resp, 400, "invalid_request", "txn_context_conflict")

    def test_additions_are_validated_and_ruled_on(self, tts: Server, idp: FakeIdP) -> None:
        token = self.original(tts, idp)
        bad = json.dumps({"warehouse": "moon"})
        refused(self.replace(tts, token, request_details=bad), 400, "invalid_request", "invalid_detail_field")

    def test_a_replacement_never_widens_the_scope(self, tts: Server, idp: FakeIdP) -> None:
        narrower = granted(self.replace(tts, self.original(tts, idp)))["access_token"]
        # orders.place does not declare that it replaces orders.fulfil: that would widen.
        resp = self.replace(tts, narrower, scope="orders.place", request_details=None)
        refused(resp, 400, "invalid_scope", "replacement_widens_scope")
        resp = self.replace(tts, self.original(tts, idp), scope="orders.audit", request_details=None)
        refused(resp, 400, "invalid_scope", "replacement_widens_scope")

    def test_the_number_of_replacements_is_bounded(self, tts: Server, idp: FakeIdP) -> None:
        token = self.original(tts, idp)
        for _ in range(2):  # max_replacements = 2
            token = granted(self.replace(tts, token, request_details=None))["access_token"]
        assert payload(token)["req_wl"] == "gateway,orders,orders"
        refused(self.replace(tts, token, request_details=None), 400, "invalid_request", "replacement_limit")

    def test_an_expired_txn_token_is_never_replaced(self, tts: Server, idp: FakeIdP) -> None:
        # The Txn-Token lives no longer than the inbound token: two seconds here.
        token = self.original(tts, idp, exp=int(time.time()) + 2)
        deadline = payload(token)["exp"]
        while time.time() < deadline + 0.1:
            time.sleep(0.2)
        resp = self.replace(tts, token, request_id="txn-replace-expired")
        assert refused(resp, 400, "invalid_request")["error_description"] == "subject_token is invalid"
        assert audit(tts, "txn-replace-expired")["reason"] == "subject_token:expired"

    def test_a_tampered_or_foreign_txn_token_is_refused(self, tts: Server, idp: FakeIdP) -> None:
        token = self.original(tts, idp)
        head, _body, sig = token.split(".")
        claims = payload(token)
        claims["tctx"]["quantity"] = 1
        forged_body = base64.urlsafe_b64encode(msgspec.json.encode(claims)).decode().rstrip("=")
        resp = self.replace(tts, f"{head}.{forged_body}.{sig}", request_id="txn-replace-forged")
        refused(resp, 400, "invalid_request")
        assert audit(tts, "txn-replace-forged")["reason"] == "subject_token:bad_signature"
        # A token of the right shape signed by someone else (the identity provider's key).
        foreign = FakeIdP(tts.url, "idp_ec", "ES256", audience=TRUST_DOMAIN).token(
            typ="txntoken+jwt", **claims
        )
        resp = self.replace(tts, foreign, request_id="txn-replace-foreign")
        refused(resp, 400, "invalid_request")
        assert audit(tts, "txn-replace-foreign")["reason"] == "subject_token:unknown_key"

    def test_a_purpose_token_is_not_a_txn_token(self, tts: Server, idp: FakeIdP) -> None:
        form = exchange_form(
            user_token(idp), client_id=None, scope="payments.approve", subject_token_type=ACCESS
        )
        purpose_token = granted(httpx.post(f"{tts.url}/token", data=form, headers=basic("gateway", SECRET)))[
            "access_token"
        ]
        resp = self.replace(tts, purpose_token, request_id="txn-replace-at")
        refused(resp, 400, "invalid_request")
        assert audit(tts, "txn-replace-at")["reason"] == "subject_token:wrong_type"

    def test_denied_replacements_are_audited_with_their_txn(self, tts: Server, idp: FakeIdP) -> None:
        token = self.original(tts, idp)
        resp = self.replace(
            tts, token, scope="orders.audit", request_details=None, request_id="txn-replace-deny"
        )
        refused(resp, 400, "invalid_scope", "replacement_widens_scope")
        record = audit(tts, "txn-replace-deny")
        assert record["decision"] == "denied" and record["txn"] == payload(token)["txn"]

    def test_the_audit_trail_follows_one_transaction(self, tts: Server, idp: FakeIdP) -> None:
        token = self.original(tts, idp)
        granted(self.replace(tts, token))
        txn = payload(token)["txn"]
        with sqlite3.connect(Path(tts.config).parent / "exchange.db") as conn:
            rows = conn.execute(
                "SELECT client_id, decision FROM audit_records WHERE txn = ? ORDER BY seq", (txn,)
            ).fetchall()
        conn.close()
        assert rows == [("gateway", "granted"), ("orders", "granted")]


def test_txn_tokens_are_part_of_the_live_configuration(tmp_path: Path, idp: FakeIdP) -> None:
    """A reload (exchange config reload) brings [txn_tokens] in, and changes it, like any purpose."""
    import subprocess
    import sys

    port = free_port()
    config = tmp_path / "exchange.toml"
    base = f'''
issuer = "http://127.0.0.1:{port}"
[store]
url = "sqlite:///exchange.db"
[[trusted_issuers]]
issuer = "{idp.issuer}"
jwks_file = "{idp.write_jwks(tmp_path / "idp.json")}"
audiences = ["purpose-exchange"]
algorithms = ["RS256"]
[[clients]]
client_id = "gateway"
auth_method = "client_secret_basic"
secret_hash = "{hash_secret(SECRET)}"
purposes = ["orders.place"]
tokens_issued_to = ["shop-app"]
[[clients]]
client_id = "orders"
auth_method = "client_secret_basic"
secret_hash = "{hash_secret(SECRET)}"
purposes = ["orders.place"]
[purposes."orders.place"]
audience = "https://orders.internal"
'''
    txn = f'''
[txn_tokens]
trust_domain = "{TRUST_DOMAIN}"
[[txn_tokens.workloads]]
client_id = "gateway"
[[txn_tokens.workloads]]
client_id = "orders"
subject_token_types = ["txn_token"]
[purposes."orders.place".txn_token]
subject_scopes = ["orders"]
'''
    config.write_text(base)
    server = Server(config, port)

    def reload() -> None:
        exe = str(Path(sys.executable).with_name("exchange"))
        command = [exe, "config", "reload", "--config", str(config)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    try:
        server.wait_ready()
        before = ask(server, user_token(idp), request_details=None, request_context=None)
        assert before.json()["error_description"] == "unsupported requested_token_type"
        config.write_text(base + txn)
        reload()
        token = granted(ask(server, user_token(idp), request_details=None, request_context=None))[
            "access_token"
        ]
        # A token issued before the next reload is still replaceable after it: our own keys carry over.
        config.write_text(base + txn.replace("[txn_tokens]", "[txn_tokens]\nttl = 200"))
        reload()
        bare = {"request_details": None, "request_context": None}
        replaced = ask(server, token, workload="orders", subject_token_type=TXN, **bare)
        assert payload(granted(replaced)["access_token"])["req_wl"] == "gateway,orders"
        fresh = payload(granted(ask(server, user_token(idp), **bare))["access_token"])
        assert 0 < fresh["exp"] - fresh["iat"] <= 200
    finally:
        server.stop()
