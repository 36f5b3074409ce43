"""The exchange end to end, over real HTTP against a running `exchange serve`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import jwt as pyjwt
import msgspec
import pytest
from joserfc import jws

from tests.conftest import CLIENT_SECRET, basic, exchange_form
from tests.idp import FakeIdP, load_key
from tests.server import Server

ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


def post(server: Server, form: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/token", data=form, headers=headers, timeout=10)


def assert_error(
    resp: httpx.Response, status: int, error: str, description: str | None = None
) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert body["error"] == error, body
    if description is not None:
        assert body["error_description"] == description
    return body


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class TestGrant:
    def test_exchange_issues_a_purpose_token_that_verifies_offline(
        self, server: Server, idp: FakeIdP
    ) -> None:
        subject = idp.token()
        resp = post(server, exchange_form(subject), {"X-Request-ID": "grant-1"})
        assert resp.status_code == 200, resp.text
        assert resp.headers["cache-control"] == "no-store"
        body = resp.json()
        assert body["token_type"] == "Bearer"
        assert body["issued_token_type"] == ACCESS_TOKEN
        assert body["scope"] == "payments.approve"
        assert 58 <= body["expires_in"] <= 60

        # An independent JWT library, keys from the served JWKS, no code of ours.
        jwks = pyjwt.PyJWKClient(f"{server.url}/.well-known/jwks.json")
        token = body["access_token"]
        key = jwks.get_signing_key_from_jwt(token)
        claims = pyjwt.decode(
            token, key.key, algorithms=["ES256"], audience="https://payments.internal", issuer=server.url
        )
        header = pyjwt.get_unverified_header(token)
        assert header["typ"] == "at+jwt" and header["kid"] == key.key_id
        subject_claims = idp.claims()
        assert claims["sub"] == "alice"
        assert claims["client_id"] == "bank-web"
        assert claims["scope"] == "payments.approve"
        assert claims["aud"] == "https://payments.internal"
        assert claims["amr"] == subject_claims["amr"] and claims["acr"] == subject_claims["acr"]
        assert isinstance(claims["auth_time"], int)
        assert claims["exp"] - claims["iat"] == 60
        assert "roles" not in claims and "nonce" not in claims
        record = server.audit("grant-1")
        assert (record["decision"], record["jti"], record["exp"]) == ("granted", claims["jti"], claims["exp"])
        assert (
            record["client_id"],
            record["issuer"],
            record["sub"],
            record["purpose"],
            record["audience"],
        ) == ("bank-web", idp.issuer, "alice", "payments.approve", "https://payments.internal")

    async def test_purpose_token_passes_our_downstream_verifier_via_the_served_jwks(
        self, server: Server, idp: FakeIdP
    ) -> None:
        from exchange.verify import PurposeTokenVerifier, VerificationError

        token = post(server, exchange_form(idp.token())).json()["access_token"]
        verifier = PurposeTokenVerifier(
            issuer=server.url,
            audience="https://payments.internal",
            jwks_uri=f"{server.url}/.well-known/jwks.json",
        )
        claims = await verifier.averify(token, purpose="payments.approve")
        assert (claims.sub, claims.client_id, claims.purpose) == ("alice", "bank-web", "payments.approve")
        with pytest.raises(VerificationError) as refused:
            await verifier.averify(token, purpose="customer.export")
        assert refused.value.reason == "wrong_purpose"

    def test_generic_oauth_client_library_gets_a_token(self, server: Server, idp_ec: FakeIdP) -> None:
        from authlib.integrations.httpx_client import OAuth2Client

        with OAuth2Client(
            "backoffice", CLIENT_SECRET, token_endpoint_auth_method="client_secret_basic"
        ) as client:
            token = client.fetch_token(
                f"{server.url}/token",
                grant_type="urn:ietf:params:oauth:grant-type:token-exchange",
                subject_token=idp_ec.token(),
                subject_token_type=ID_TOKEN,
                scope="customer.export",
                audience="https://crm.internal",
            )
        jwks = pyjwt.PyJWKClient(f"{server.url}/.well-known/jwks.json")
        claims = pyjwt.decode(
            token["access_token"],
            jwks.get_signing_key_from_jwt(token["access_token"]).key,
            algorithms=["ES256"],
            audience="https://crm.internal",
            issuer=server.url,
        )
        assert claims["client_id"] == "backoffice" and claims["scope"] == "customer.export"

    def test_each_token_has_a_unique_jti(self, server: Server, idp: FakeIdP) -> None:
        subject = idp.token()
        jtis = {
            pyjwt.decode(
                post(server, exchange_form(subject)).json()["access_token"],
                options={"verify_signature": False},
            )["jti"]
            for _ in range(5)
        }
        assert len(jtis) == 5

    def test_lifetime_never_outlives_the_subject_token(self, server: Server, idp: FakeIdP) -> None:
        exp = int(time.time()) + 20
        body = post(server, exchange_form(idp.token(exp=exp))).json()
        claims = pyjwt.decode(body["access_token"], options={"verify_signature": False})
        assert claims["exp"] == exp
        assert body["expires_in"] <= 20

    def test_client_secret_post_and_requested_jwt_type(self, server: Server, idp: FakeIdP) -> None:
        resp = post(
            server,
            exchange_form(
                idp.token(),
                client_id="batch",
                client_secret=CLIENT_SECRET,
                scope="customer.export",
                resource="https://export.internal",
                requested_token_type="urn:ietf:params:oauth:token-type:jwt",
            ),
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
        claims = pyjwt.decode(resp.json()["access_token"], options={"verify_signature": False})
        assert claims["aud"] == "https://export.internal"

    def test_private_key_jwt_client_assertion(self, server: Server, idp: FakeIdP) -> None:
        key = load_key("client_ec")
        now = int(time.time())
        assertion = jws.serialize_compact(
            {"alg": "ES256", "kid": key.thumbprint()},
            msgspec.json.encode(
                {
                    "iss": "signer",
                    "sub": "signer",
                    "aud": f"{server.url}/token",
                    "iat": now,
                    "exp": now + 60,
                    "jti": f"a-{now}-{time.monotonic_ns()}",
                }
            ),
            key,
            algorithms=["ES256"],
        )
        form = exchange_form(
            idp.token(),
            client_id="signer",
            scope="customer.export",
            audience="https://crm.internal",
            client_assertion=assertion,
            client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )
        assert post(server, form).status_code == 200
        # The same assertion again is a replay.
        assert_error(post(server, form), 401, "invalid_client")

    def test_access_token_subject_with_at_jwt_type(self, server: Server, idp: FakeIdP) -> None:
        resp = post(server, exchange_form(idp.token(typ="at+jwt"), subject_token_type=ACCESS_TOKEN))
        assert resp.status_code == 200, resp.text


class TestSubjectTokenRejected:
    """Every failure is the same opaque answer; the audit record has the precise reason."""

    def reject(self, server: Server, token: str, reason: str, **params: Any) -> None:
        rid = f"t-{time.monotonic_ns()}"
        resp = post(server, exchange_form(token, **params), {"X-Request-ID": rid})
        assert_error(resp, 400, "invalid_request", "subject_token is invalid")
        record = server.audit(rid)
        assert record["decision"] == "denied"
        assert record["reason"] == f"subject_token:{reason}"
        assert token not in json.dumps(record)

    def test_expired(self, server: Server, idp: FakeIdP) -> None:
        now = int(time.time())
        self.reject(server, idp.token(iat=now - 600, exp=now - 31), "expired")

    def test_expired_within_leeway_is_still_accepted_but_never_outlives_it(
        self, server: Server, idp: FakeIdP
    ) -> None:
        now = int(time.time())
        # exp 10 s ago is inside the 30 s leeway, but a token can't be minted to expire in the past.
        self.reject(server, idp.token(iat=now - 600, exp=now - 10), "expires_now")

    def test_not_yet_valid(self, server: Server, idp: FakeIdP) -> None:
        self.reject(server, idp.token(nbf=int(time.time()) + 120), "not_yet_valid")

    def test_issued_in_the_future(self, server: Server, idp: FakeIdP) -> None:
        self.reject(server, idp.token(iat=int(time.time()) + 120), "issued_in_future")

    def test_untrusted_issuer(self, server: Server, idp: FakeIdP) -> None:
        self.reject(server, idp.token(iss="https://evil.example.com"), "untrusted_issuer")

    def test_issuer_claim_of_another_trusted_issuer_with_this_key(
        self, server: Server, idp: FakeIdP, idp_ec: FakeIdP
    ) -> None:
        self.reject(server, idp.token(iss=idp_ec.issuer), "algorithm_not_allowed")

    def test_wrong_audience(self, server: Server, idp: FakeIdP) -> None:
        self.reject(server, idp.token(aud="someone-else"), "wrong_audience")

    def test_missing_exp_or_sub(self, server: Server, idp: FakeIdP) -> None:
        self.reject(server, idp.token(exp=None), "missing_exp")
        self.reject(server, idp.token(sub=None), "missing_sub")

    def test_unknown_kid(self, server: Server, idp: FakeIdP) -> None:
        self.reject(server, idp.token(header={"kid": "not-a-known-kid"}), "unknown_kid")

    def test_signed_by_an_unknown_key_with_the_right_kid(self, server: Server, idp_ec: FakeIdP) -> None:
        self.reject(server, idp_ec.token(key=load_key("attacker_ec")), "bad_signature")

    def test_alg_none(self, server: Server, idp: FakeIdP) -> None:
        header = b64(json.dumps({"alg": "none", "kid": idp.kid}).encode())
        payload = b64(json.dumps(idp.claims()).encode())
        self.reject(server, f"{header}.{payload}.", "algorithm_not_allowed")  # no signature at all

    def test_hs256_signed_with_the_issuers_public_key(self, server: Server, idp: FakeIdP) -> None:
        # joserfc rightly refuses to make this token, so it is made by hand, as an attacker would.
        public_pem = idp.key.as_pem(private=False)
        signing_input = (
            b64(json.dumps({"alg": "HS256", "kid": idp.kid, "typ": "JWT"}).encode())
            + "."
            + b64(json.dumps(idp.claims()).encode())
        )
        mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        self.reject(server, f"{signing_input}.{b64(mac)}", "algorithm_not_allowed")

    def test_algorithm_not_allowed_for_issuer(self, server: Server, idp: FakeIdP) -> None:
        self.reject(server, idp.token(alg="PS256"), "algorithm_not_allowed")

    def test_embedded_jwk_header(self, server: Server, idp_ec: FakeIdP) -> None:
        attacker = load_key("attacker_ec")
        self.reject(
            server,
            idp_ec.token(key=attacker, header={"jwk": attacker.as_dict(private=False)}),
            "forbidden_header",
        )

    @pytest.mark.parametrize("member", ["jku", "x5u"])
    def test_key_location_headers(self, server: Server, idp_ec: FakeIdP, member: str) -> None:
        self.reject(
            server, idp_ec.token(header={member: "https://evil.example.com/keys"}), "forbidden_header"
        )

    def test_unknown_crit(self, server: Server, idp_ec: FakeIdP) -> None:
        # Properly signed by the real issuer key; joserfc won't sign unknown crit, so sign the raw input.
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        header = {"alg": "ES256", "kid": idp_ec.kid, "crit": ["exp-ext"], "exp-ext": 1}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(idp_ec.claims()).encode())}"
        der = idp_ec.key.private_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        self.reject(
            server,
            f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}",
            "forbidden_header",
        )

    def test_tampered_payload(self, server: Server, idp: FakeIdP) -> None:
        header, _, signature = idp.token().split(".")
        payload = b64(json.dumps(idp.claims(sub="mallory")).encode())
        self.reject(server, f"{header}.{payload}.{signature}", "bad_signature")

    def test_oversized_token(self, server: Server, idp: FakeIdP) -> None:
        self.reject(server, idp.token(padding="x" * 9000), "oversized")

    def test_json_serialised_jws(self, server: Server, idp: FakeIdP) -> None:
        header, payload, signature = idp.token().split(".")
        self.reject(
            server, json.dumps({"protected": header, "payload": payload, "signature": signature}), "malformed"
        )

    def test_alg_none_with_a_signature_segment(self, server: Server, idp: FakeIdP) -> None:
        header = b64(json.dumps({"alg": "none", "kid": idp.kid}).encode())
        payload = b64(json.dumps(idp.claims()).encode())
        self.reject(server, f"{header}.{payload}.AAAA", "algorithm_not_allowed")

    def test_stray_characters_make_another_spelling(self, server: Server, idp: FakeIdP) -> None:
        header, payload, signature = idp.token().split(".")
        self.reject(server, f"{header}.{payload}.{signature[:10]}!{signature[10:]}", "malformed")

    def test_deeply_nested_payload(self, server: Server, idp: FakeIdP) -> None:
        header = b64(json.dumps({"alg": "RS256", "kid": idp.kid}).encode())
        payload = b64(b'{"a":' + b"[" * 2500 + b"]" * 2500 + b"}")
        self.reject(server, f"{header}.{payload}.AAAA", "malformed")

    def test_garbage(self, server: Server) -> None:
        self.reject(server, "not.a.token", "malformed")

    def test_access_token_presented_as_id_token(self, server: Server, idp: FakeIdP) -> None:
        self.reject(server, idp.token(typ="at+jwt"), "access_token_declared_as_id_token")

    def test_id_token_presented_as_access_token(self, server: Server, idp: FakeIdP) -> None:
        self.reject(server, idp.token(typ="JWT"), "not_an_access_token", subject_token_type=ACCESS_TOKEN)


class TestRequestRejected:
    def test_missing_grant_type(self, server: Server, idp: FakeIdP) -> None:
        assert_error(post(server, exchange_form(idp.token(), grant_type=None)), 400, "invalid_request")

    def test_unsupported_grant_type(self, server: Server, idp: FakeIdP) -> None:
        assert_error(
            post(server, exchange_form(idp.token(), grant_type="password")), 400, "unsupported_grant_type"
        )

    @pytest.mark.parametrize(
        ("missing", "error"),
        [
            ("subject_token", "invalid_request"),
            ("subject_token_type", "invalid_request"),
            ("scope", "invalid_scope"),  # RFC 6749 §3.3: no default scope, so the scope is invalid
        ],
    )
    def test_missing_parameter(self, server: Server, idp: FakeIdP, missing: str, error: str) -> None:
        body = assert_error(post(server, exchange_form(idp.token(), **{missing: None})), 400, error)
        assert missing in body["error_description"]

    def test_unsupported_subject_token_type(self, server: Server, idp: FakeIdP) -> None:
        assert_error(
            post(server, exchange_form(idp.token(), subject_token_type="urn:x:saml")),
            400,
            "invalid_request",
            "unsupported subject_token_type",
        )

    def test_repeated_parameter(self, server: Server, idp: FakeIdP) -> None:
        form = exchange_form(idp.token())
        body = "&".join(f"{k}={v}" for k, v in form.items()) + "&scope=payments.approve"
        resp = httpx.post(
            f"{server.url}/token", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert_error(resp, 400, "invalid_request", "parameter scope is repeated")

    def test_invalid_percent_encoded_utf8_is_refused(self, server: Server, idp: FakeIdP) -> None:
        body = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&scope=%ff%fe"
        resp = httpx.post(
            f"{server.url}/token", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert_error(resp, 400, "invalid_request", "malformed form body")

    def test_a_huge_unknown_client_id_is_counted_truncated(self, server: Server, idp: FakeIdP) -> None:
        resp = post(server, exchange_form(idp.token(), client_id="x" * 5000), {"X-Request-ID": "long-client"})
        assert_error(resp, 401, "invalid_client")
        # Not authenticated: counted, not recorded (docs/ARCHITECTURE.md, "Audit"), and bounded either way.
        assert not server.audit_exists("long-client")
        counted = server.denial_count(client_id="x" * 256 + "...")
        assert (counted["reason"], counted["error"], counted["count"]) == (
            "unknown_client",
            "invalid_client",
            1,
        )

    def test_json_body_is_refused(self, server: Server, idp: FakeIdP) -> None:
        resp = httpx.post(f"{server.url}/token", json=exchange_form(idp.token()))
        assert_error(resp, 400, "invalid_request")

    def test_unknown_purpose(self, server: Server, idp: FakeIdP) -> None:
        assert_error(
            post(server, exchange_form(idp.token(), scope="payments.refund")),
            400,
            "invalid_scope",
            "unknown purpose",
        )

    def test_two_purposes(self, server: Server, idp: FakeIdP) -> None:
        assert_error(
            post(server, exchange_form(idp.token(), scope="payments.approve customer.export")),
            400,
            "invalid_scope",
        )

    def test_purpose_not_allowed_for_client(self, server: Server, idp: FakeIdP) -> None:
        resp = post(server, exchange_form(idp.token(), client_id="batch", client_secret=CLIENT_SECRET))
        assert_error(resp, 400, "unauthorized_client")

    def test_audience_not_allowed(self, server: Server, idp: FakeIdP) -> None:
        assert_error(
            post(server, exchange_form(idp.token(), audience="https://evil.internal")), 400, "invalid_target"
        )

    def test_audience_required_when_purpose_has_several(self, server: Server, idp: FakeIdP) -> None:
        assert_error(post(server, exchange_form(idp.token(), scope="customer.export")), 400, "invalid_target")

    def test_two_audiences(self, server: Server, idp: FakeIdP) -> None:
        form = exchange_form(
            idp.token(),
            scope="customer.export",
            audience="https://crm.internal",
            resource="https://export.internal",
        )
        assert_error(post(server, form), 400, "invalid_target")

    def test_unknown_client(self, server: Server, idp: FakeIdP) -> None:
        resp = post(server, exchange_form(idp.token(), client_id="stranger"))
        assert_error(resp, 401, "invalid_client")
        # RFC 6749 §5.2: a Basic challenge only for a client that tried Basic.
        assert "www-authenticate" not in resp.headers
        form = exchange_form(idp.token(), client_id=None)
        resp = post(server, form, basic("stranger", "some-secret-0000000"))
        assert_error(resp, 401, "invalid_client")
        assert resp.headers["www-authenticate"].startswith("Basic")

    def test_bad_client_secret(self, server: Server, idp: FakeIdP) -> None:
        form = exchange_form(
            idp.token(), client_id=None, scope="customer.export", audience="https://crm.internal"
        )
        assert_error(post(server, form, basic("backoffice", "wrong-secret-000000")), 401, "invalid_client")

    def test_secret_client_without_secret(self, server: Server, idp: FakeIdP) -> None:
        form = exchange_form(
            idp.token(), client_id="backoffice", scope="customer.export", audience="https://crm.internal"
        )
        assert_error(post(server, form), 401, "invalid_client")

    def test_two_auth_methods_at_once(self, server: Server, idp: FakeIdP) -> None:
        form = exchange_form(idp.token(), client_id="backoffice", client_secret=CLIENT_SECRET)
        assert_error(post(server, form, basic("backoffice", CLIENT_SECRET)), 400, "invalid_request")

    def test_rule_denial_names_its_code(self, server: Server, idp: FakeIdP) -> None:
        resp = post(server, exchange_form(idp.token(amr=["pwd"])), {"X-Request-ID": "deny-1"})
        body = assert_error(resp, 400, "invalid_request")
        record = server.audit("deny-1")
        assert body["denial"] and record["denial"] == body["denial"]
        assert record["decision"] == "denied" and record["jti"] is None

    def test_oversized_body(self, server: Server, idp: FakeIdP) -> None:
        resp = post(server, exchange_form(idp.token(), filler="x" * 70000))
        assert resp.status_code in {400, 413}
        assert resp.json()["error"] == "invalid_request"


class TestDiscovery:
    def test_jwks_is_public_and_cacheable(self, server: Server) -> None:
        resp = httpx.get(f"{server.url}/.well-known/jwks.json")
        assert resp.status_code == 200
        assert "max-age=" in resp.headers["cache-control"]
        keys = resp.json()["keys"]
        assert keys and all("d" not in k and "p" not in k for k in keys)
        assert {k["alg"] for k in keys} == {"ES256"}

    def test_authorization_server_metadata(self, server: Server) -> None:
        meta = httpx.get(f"{server.url}/.well-known/oauth-authorization-server").json()
        assert meta["issuer"] == server.url
        assert meta["token_endpoint"] == f"{server.url}/token"
        assert meta["jwks_uri"] == f"{server.url}/.well-known/jwks.json"
        assert meta["grant_types_supported"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
        assert set(meta["token_endpoint_auth_methods_supported"]) == {
            "none",
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        }

    def test_health_and_readiness(self, server: Server) -> None:
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{server.url}/readyz").status_code == 200

    def test_unknown_path_is_json_not_html(self, server: Server) -> None:
        resp = httpx.get(f"{server.url}/nope")
        assert resp.status_code == 404
        assert resp.headers["content-type"].startswith("application/json")

    def test_wrong_method_is_json(self, server: Server) -> None:
        resp = httpx.get(f"{server.url}/token")
        assert resp.status_code == 405
        assert resp.json()["error"] == "invalid_request"

    @pytest.mark.parametrize("path", ["/token/", "//token"])
    def test_another_spelling_of_the_token_path_gets_the_same_answers(
        self, server: Server, idp: FakeIdP, path: str
    ) -> None:
        # /token itself is answered before litestar; the spellings litestar normalises reach the same
        # endpoint through it, with the same headers.
        def answers(at: str, **form: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
            resp = httpx.post(
                f"{server.url}{at}",
                data=exchange_form(idp.token(), **form),
                headers={"X-Request-ID": "spelling-1"},
            )
            kept = {k: resp.headers.get(k, "") for k in ("cache-control", "pragma", "x-request-id")}
            return resp.status_code, resp.json(), kept

        no_grant = answers(path, grant_type="nope")
        assert no_grant == answers("/token", grant_type="nope")
        assert no_grant[0] == 400 and no_grant[1]["error"] == "unsupported_grant_type"
        never_stored = {"cache-control": "no-store", "pragma": "no-cache"}
        assert no_grant[2] == {**never_stored, "x-request-id": "spelling-1"}
        status, body, headers = answers(path)
        assert (status, headers["cache-control"]) == (200, "no-store")
        assert body["token_type"] == "Bearer"

    def test_a_bad_host_header_is_refused_on_the_token_path_too(self, server: Server) -> None:
        resp = httpx.post(f"{server.url}/token", headers={"Host": "bad host"}, content=b"")
        assert resp.status_code == 400
        assert resp.json() == {"error": "invalid_request", "error_description": "Invalid host header"}
