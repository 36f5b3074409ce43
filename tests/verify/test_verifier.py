"""Every check PurposeTokenVerifier makes, each negative path asserting its exact reason code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import Key

from exchange.verify import (
    REASONS,
    InMemoryReplayGuard,
    PurposeTokenVerifier,
    StaticJWKS,
    VerificationError,
    VerifiedClaims,
)
from tests.verify.conftest import AUDIENCE, ISSUER, NOW, PURPOSE, base_claims, mint, public_jwks


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def verifier_for(*keys: Key, **options: Any) -> PurposeTokenVerifier:
    return PurposeTokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(*keys), **options)


def reason_of(verifier: PurposeTokenVerifier, token: str, **kwargs: Any) -> str:
    with pytest.raises(VerificationError) as caught:
        verifier.verify(token, now=kwargs.pop("now", NOW), **kwargs)
    return caught.value.reason


class TestAccepts:
    def test_valid_es256_token_returns_typed_claims(self, ec_key: Key) -> None:
        claims = verifier_for(ec_key).verify(mint(ec_key), purpose=PURPOSE, now=NOW)
        assert isinstance(claims, VerifiedClaims)
        assert (claims.issuer, claims.sub, claims.audience) == (ISSUER, "alice", AUDIENCE)
        assert (claims.purpose, claims.client_id, claims.exp) == (PURPOSE, "checkout", NOW + 60)

    def test_claims_are_immutable(self, ec_key: Key) -> None:
        claims = verifier_for(ec_key).verify(mint(ec_key), now=NOW)
        with pytest.raises(AttributeError):
            claims.sub = "mallory"  # type: ignore[misc]

    @pytest.mark.parametrize("alg", ["RS256", "PS256"])
    def test_rsa_algorithms_are_accepted(self, rsa_key: Key, alg: str) -> None:
        token = mint(rsa_key, alg=alg)
        assert verifier_for(rsa_key).verify(token, now=NOW).sub == "alice"

    @pytest.mark.parametrize("alg", ["Ed25519", "EdDSA"])
    def test_ed25519_under_both_names_is_accepted(self, ed_key: Key, alg: str) -> None:
        token = _sign_raw(ed_key, {"alg": alg, "typ": "at+jwt", "kid": ed_key.kid}, base_claims())
        assert verifier_for(ed_key).verify(token, now=NOW).sub == "alice"

    def test_optional_claims_are_exposed(self, ec_key: Key) -> None:
        claims = base_claims(
            acr="urn:mfa",
            amr=["pwd", "otp"],
            auth_time=NOW - 5,
            act={"sub": "agent-1", "act": {"sub": "agent-0"}},
            authorization_details=[{"type": "payment", "amount": 10.5, "account": "DE01"}],
        )
        verified = verifier_for(ec_key).verify(mint(ec_key, claims), now=NOW)
        assert verified.amr == ("pwd", "otp")
        assert verified.acr == "urn:mfa" and verified.auth_time == NOW - 5
        assert verified.actors == ["agent-1", "agent-0"]
        assert verified.to_dict()["scope"] == PURPOSE

    def test_any_key_of_the_jwks_verifies(self, ec_key: Key, rsa_key: Key) -> None:
        verifier = verifier_for(ec_key, rsa_key)
        assert verifier.verify(mint(rsa_key, alg="RS256"), now=NOW).sub == "alice"
        assert verifier.verify(mint(ec_key), now=NOW).sub == "alice"


class TestSignatureAndHeader:
    def test_token_signed_by_unknown_key_is_unknown_key(self, ec_key: Key, other_ec_key: Key) -> None:
        assert reason_of(verifier_for(ec_key), mint(other_ec_key)) == "unknown_key"

    def test_key_removed_from_the_jwks_is_unknown_key(self, ec_key: Key, rsa_key: Key) -> None:
        token = mint(ec_key)
        assert verifier_for(ec_key, rsa_key).verify(token, now=NOW).sub == "alice"
        assert reason_of(verifier_for(rsa_key), token) == "unknown_key"

    def test_known_kid_with_another_keys_signature_is_bad_signature(
        self, ec_key: Key, other_ec_key: Key
    ) -> None:
        # The header names ec_key's kid but other_ec_key signed: the kid match must not be enough.
        token = mint(other_ec_key, kid=ec_key.kid)
        assert reason_of(verifier_for(ec_key), token) == "bad_signature"

    def test_tampered_payload_is_bad_signature(self, ec_key: Key) -> None:
        header, _, signature = mint(ec_key).split(".")
        forged = b64(json.dumps(base_claims(sub="mallory")).encode())
        assert reason_of(verifier_for(ec_key), f"{header}.{forged}.{signature}") == "bad_signature"

    def test_truncated_signature_is_bad_signature(self, ec_key: Key) -> None:
        assert reason_of(verifier_for(ec_key), mint(ec_key)[:-2]) == "bad_signature"  # 63 bytes, canonical

    def test_alg_none_is_refused(self, ec_key: Key) -> None:
        header = {"alg": "none", "typ": "at+jwt", "kid": ec_key.kid}
        token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(base_claims()).encode())}."
        assert reason_of(verifier_for(ec_key), token) == "bad_signature"

    def test_hs256_made_with_the_public_key_is_refused(self, rsa_key: Key) -> None:
        # The classic confusion attack: the public key's PEM used as an HMAC secret.
        secret = rsa_key.as_pem(private=False)
        header = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": rsa_key.kid}).encode())
        payload = b64(json.dumps(base_claims()).encode())
        mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        assert reason_of(verifier_for(rsa_key), f"{header}.{payload}.{b64(mac)}") == "bad_signature"

    def test_algorithm_outside_the_configured_allow_list_is_refused(self, rsa_key: Key) -> None:
        verifier = verifier_for(rsa_key, algorithms=["ES256"])
        assert reason_of(verifier, mint(rsa_key, alg="RS256")) == "bad_signature"

    def test_alg_that_does_not_fit_the_key_type_is_bad_signature(self, ec_key: Key, rsa_key: Key) -> None:
        # An RS256 token whose kid names the EC key: the EC key must not be tried as an RSA key.
        token = mint(rsa_key, alg="RS256", kid=ec_key.kid)
        assert reason_of(verifier_for(ec_key), token) == "bad_signature"

    def test_json_serialised_jws_is_malformed(self, ec_key: Key) -> None:
        general = jws.serialize_json(
            {"protected": {"alg": "ES256", "typ": "at+jwt", "kid": ec_key.kid}},
            json.dumps(base_claims()),
            ec_key,
            algorithms=["ES256"],
        )
        assert reason_of(verifier_for(ec_key), json.dumps(general)) == "malformed"

    @pytest.mark.parametrize("typ", [None, "JWT", "application/jwt", "dpop+jwt"])
    def test_other_typ_is_wrong_type(self, ec_key: Key, typ: str | None) -> None:
        token = _sign_raw(ec_key, {"alg": "ES256", "typ": typ, "kid": ec_key.kid}, base_claims())
        assert reason_of(verifier_for(ec_key), token) == "wrong_type"

    def test_application_prefixed_typ_is_accepted(self, ec_key: Key) -> None:
        token = _sign_raw(
            ec_key, {"alg": "ES256", "typ": "application/AT+JWT", "kid": ec_key.kid}, base_claims()
        )
        assert verifier_for(ec_key).verify(token, now=NOW).sub == "alice"

    @pytest.mark.parametrize(
        "member",
        [
            {"crit": ["exp"], "exp": 1},
            {"jku": "https://evil.test/jwks"},
            {"x5u": "https://evil.test/cert"},
            {"x5c": ["MIIB"]},
        ],
    )
    def test_header_members_that_choose_keys_or_demand_processing_are_malformed(
        self, ec_key: Key, member: dict[str, Any]
    ) -> None:
        header = {"alg": "ES256", "typ": "at+jwt", "kid": ec_key.kid, **member}
        assert reason_of(verifier_for(ec_key), _sign_raw(ec_key, header, base_claims())) == "malformed"

    def test_embedded_jwk_header_is_malformed(self, ec_key: Key, other_ec_key: Key) -> None:
        header = {
            "alg": "ES256",
            "typ": "at+jwt",
            "kid": ec_key.kid,
            "jwk": other_ec_key.as_dict(private=False),
        }
        assert reason_of(verifier_for(ec_key), _sign_raw(other_ec_key, header, base_claims())) == "malformed"

    def test_missing_kid_is_malformed(self, ec_key: Key) -> None:
        token = _sign_raw(ec_key, {"alg": "ES256", "typ": "at+jwt"}, base_claims())
        assert reason_of(verifier_for(ec_key), token) == "malformed"

    def test_token_over_the_size_cap_is_malformed_before_parsing(self, ec_key: Key) -> None:
        verifier = verifier_for(ec_key, max_token_bytes=512)
        # Not even a JWS: were it parsed, this would fail differently; the cap answers first.
        assert reason_of(verifier, "x" * 513) == "malformed"
        big = mint(ec_key, base_claims(sub="a" * 600))
        assert reason_of(verifier, big) == "malformed"

    @pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "é.é.é", "!!!.###.$$$"])
    def test_garbage_is_malformed(self, ec_key: Key, token: str) -> None:
        assert reason_of(verifier_for(ec_key), token) == "malformed"

    def test_non_base64url_characters_are_malformed(self, ec_key: Key) -> None:
        header, payload, signature = mint(ec_key).split(".")
        assert reason_of(verifier_for(ec_key), f"{header}.{payload}+.{signature}") == "malformed"
        assert reason_of(verifier_for(ec_key), f"{header}.{payload}.{signature}==") == "malformed"

    def test_remembered_header_still_needs_a_good_signature(self, ec_key: Key) -> None:
        verifier = verifier_for(ec_key)
        good = mint(ec_key)
        assert verifier.verify(good, now=NOW).sub == "alice"
        header, _, signature = good.split(".")
        forged = b64(json.dumps(base_claims(sub="mallory")).encode())
        assert reason_of(verifier, f"{header}.{forged}.{signature}") == "bad_signature"

    def test_header_memo_stays_bounded(self, ec_key: Key) -> None:
        verifier = verifier_for(ec_key)
        for n in range(200):
            verifier.verify(mint(ec_key, x5t=f"x{n}"), now=NOW)
        assert len(verifier._jws._headers) <= 64

    def test_header_that_is_not_an_object_is_malformed(self, ec_key: Key) -> None:
        token = f"{b64(b'[1, 2]')}.{b64(b'{}')}.{b64(b'sig')}"
        assert reason_of(verifier_for(ec_key), token) == "malformed"


class TestClaims:
    def test_other_issuer_is_wrong_issuer(self, ec_key: Key) -> None:
        token = mint(ec_key, base_claims(iss=ISSUER + "/"))
        assert reason_of(verifier_for(ec_key), token) == "wrong_issuer"

    def test_token_for_another_audience_is_wrong_audience(self, ec_key: Key) -> None:
        assert reason_of(verifier_for(ec_key), mint(ec_key, base_claims(aud="ledger"))) == "wrong_audience"

    def test_audience_list_is_malformed(self, ec_key: Key) -> None:
        # The contract says aud is one string; a list is not "contains our audience".
        token = mint(ec_key, base_claims(aud=[AUDIENCE, "ledger"]))
        assert reason_of(verifier_for(ec_key), token) == "malformed"

    def test_token_for_another_purpose_is_wrong_purpose(self, ec_key: Key) -> None:
        token = mint(ec_key, base_claims(scope="payments.refund"))
        assert reason_of(verifier_for(ec_key), token, purpose=PURPOSE) == "wrong_purpose"
        # Without a purpose asked for, the same token is fine.
        assert verifier_for(ec_key).verify(token, now=NOW).purpose == "payments.refund"

    def test_expiry_is_exact_at_the_leeway_boundary(self, ec_key: Key) -> None:
        verifier = verifier_for(ec_key, leeway=10)
        token = mint(ec_key, base_claims(exp=NOW + 60))
        assert verifier.verify(token, now=NOW + 60 + 10 - 0.001).sub == "alice"
        assert reason_of(verifier, token, now=NOW + 60 + 10) == "expired"

    def test_zero_leeway_rejects_at_exp(self, ec_key: Key) -> None:
        verifier = verifier_for(ec_key, leeway=0)
        token = mint(ec_key, base_claims(exp=NOW + 60))
        assert verifier.verify(token, now=NOW + 59).sub == "alice"
        assert reason_of(verifier, token, now=NOW + 60) == "expired"

    def test_token_issued_in_the_future_beyond_leeway_is_expired(self, ec_key: Key) -> None:
        verifier = verifier_for(ec_key, leeway=10)
        token = mint(ec_key, base_claims(iat=NOW + 11, exp=NOW + 71))
        assert reason_of(verifier, token, now=NOW) == "expired"
        assert verifier.verify(mint(ec_key, base_claims(iat=NOW + 10, exp=NOW + 70)), now=NOW).sub == "alice"

    def test_lifetime_over_the_maximum_is_malformed(self, ec_key: Key) -> None:
        verifier = verifier_for(ec_key, max_lifetime=900)
        assert verifier.verify(mint(ec_key, base_claims(exp=NOW + 900)), now=NOW).sub == "alice"
        assert reason_of(verifier, mint(ec_key, base_claims(exp=NOW + 901))) == "malformed"

    def test_exp_not_after_iat_is_malformed(self, ec_key: Key) -> None:
        assert reason_of(verifier_for(ec_key), mint(ec_key, base_claims(exp=NOW))) == "malformed"

    @pytest.mark.parametrize(
        "claims",
        [
            base_claims(jti=None),
            base_claims(exp="soon"),
            base_claims(scope=None),
            base_claims(unexpected="claim"),
            base_claims(authorization_details=[{"amount": 1}]),
        ],
        ids=["no-jti", "exp-not-int", "no-scope", "unknown-claim", "detail-without-type"],
    )
    def test_claims_outside_the_contract_are_malformed(self, ec_key: Key, claims: dict[str, Any]) -> None:
        assert reason_of(verifier_for(ec_key), mint(ec_key, claims)) == "malformed"

    def test_payload_that_is_not_json_is_malformed(self, ec_key: Key) -> None:
        token = jws.serialize_compact(
            {"alg": "ES256", "typ": "at+jwt", "kid": ec_key.kid}, b"not json", ec_key, algorithms=["ES256"]
        )
        assert reason_of(verifier_for(ec_key), token) == "malformed"


class TestRequireDetail:
    @pytest.fixture
    def claims(self, ec_key: Key) -> VerifiedClaims:
        details = [
            {"type": "account_read", "account": "DE01"},
            {"type": "payment", "amount": 10.5, "currency": "EUR", "account": "DE01", "instant": True},
        ]
        return verifier_for(ec_key).verify(mint(ec_key, base_claims(authorization_details=details)), now=NOW)

    def test_matching_detail_is_returned(self, claims: VerifiedClaims) -> None:
        from decimal import Decimal

        detail = claims.require_detail(type="payment", amount=Decimal("10.50"), account="DE01")
        assert detail["currency"] == "EUR"
        assert claims.require_detail(type="payment", instant=True)["amount"] == 10.5

    @pytest.mark.parametrize(
        "expected",
        [
            {"type": "payment", "amount": 10.51},
            {"type": "payment", "amount": "10.5"},
            {"type": "payment", "account": "DE02"},
            {"type": "payment", "instant": 1},
            {"type": "payment", "beneficiary": "x"},
            {"type": "refund"},
        ],
    )
    def test_detail_that_does_not_match_the_operation_is_wrong_purpose(
        self, claims: VerifiedClaims, expected: dict[str, Any]
    ) -> None:
        with pytest.raises(VerificationError) as caught:
            claims.require_detail(**expected)
        assert caught.value.reason == "wrong_purpose"


class TestSingleUse:
    def test_single_use_token_is_accepted_once(self, ec_key: Key) -> None:
        verifier = verifier_for(ec_key)
        token = mint(ec_key, base_claims(single_use=True))
        assert verifier.verify(token, now=NOW).single_use is True
        assert reason_of(verifier, token) == "replayed"

    def test_reusable_token_is_not_recorded(self, ec_key: Key) -> None:
        guard = InMemoryReplayGuard()
        verifier = verifier_for(ec_key, replay_guard=guard)
        token = mint(ec_key)
        verifier.verify(token, now=NOW)
        verifier.verify(token, now=NOW)
        assert len(guard) == 0

    async def test_async_verify_shares_the_guard(self, ec_key: Key) -> None:
        verifier = verifier_for(ec_key)
        token = mint(ec_key, base_claims(single_use=True))
        await verifier.averify(token, now=NOW)
        with pytest.raises(VerificationError) as caught:
            await verifier.averify(token, now=NOW)
        assert caught.value.reason == "replayed"

    def test_sync_verify_with_an_async_only_guard_is_a_programming_error(self, ec_key: Key) -> None:
        class AsyncOnly:
            async def consume(self, issuer: str, jti: str, expires_at: float, *, now: float) -> bool:
                return True

        verifier = verifier_for(ec_key, replay_guard=AsyncOnly())
        with pytest.raises(TypeError):
            verifier.verify(mint(ec_key), now=NOW)


class TestConfiguration:
    @pytest.mark.parametrize("algorithms", [["HS256"], ["none"], ["ES256", "HS512"], []])
    def test_symmetric_none_or_empty_allow_lists_are_refused(
        self, ec_key: Key, algorithms: list[str]
    ) -> None:
        with pytest.raises(ValueError):
            verifier_for(ec_key, algorithms=algorithms)

    def test_jwks_uri_and_jwks_together_are_refused(self, ec_key: Key) -> None:
        with pytest.raises(ValueError):
            PurposeTokenVerifier(
                issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key), jwks_uri="https://x"
            )

    def test_default_jwks_uri_is_the_issuers_well_known(self) -> None:
        verifier = PurposeTokenVerifier(issuer=ISSUER + "/", audience=AUDIENCE)
        assert verifier.keys.uri == ISSUER + "/.well-known/jwks.json"  # type: ignore[attr-defined]

    def test_static_jwks_object_is_used_as_is(self, ec_key: Key) -> None:
        keys = StaticJWKS(public_jwks(ec_key))
        verifier = PurposeTokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=keys)
        assert verifier.keys is keys

    def test_reason_codes_are_the_documented_set(self) -> None:
        assert set(REASONS) == {
            "expired", "wrong_audience", "wrong_issuer", "bad_signature", "unknown_key",
            "keys_unavailable", "wrong_type", "wrong_purpose", "malformed", "replayed",
        }  # fmt: skip
        with pytest.raises(ValueError):
            VerificationError("nope")  # type: ignore[arg-type]


def _sign_raw(key: Key, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Sign with an arbitrary header, bypassing joserfc's header checks (to build hostile tokens)."""
    header = {name: value for name, value in header.items() if value is not None}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    alg = header["alg"]
    algorithm = jws.JWSRegistry.algorithms["ES256" if alg not in jws.JWSRegistry.algorithms else alg]
    signature = algorithm.sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(signature)}"
