"""TxnTokenVerifier and the `Txn-Token` header (draft-ietf-oauth-transaction-tokens-10 §12): tokens
minted here with joserfc as the draft and docs/TXN_TOKENS.md describe them, so the verifier is tested
against the format."""

from __future__ import annotations

import json
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import Key

from exchange.verify import VerificationError
from exchange.verify.access import read_txn_token
from exchange.verify.bearer import NO_TXN_TOKEN, TWO_TXN_TOKENS
from exchange.verify.txn import TxnToken, TxnTokenVerifier, txn_token_of
from tests.verify.conftest import (
    ISSUER,
    NOW,
    TRUST_DOMAIN,
    TXN_SCOPE,
    mint,
    mint_txn,
    public_jwks,
    txn_claims,
)


def verifier(*keys: Key, **options: Any) -> TxnTokenVerifier:
    return TxnTokenVerifier(
        trust_domain=TRUST_DOMAIN, issuer=ISSUER, jwks=public_jwks(*keys), clock=lambda: NOW, **options
    )


def reason(check: Any) -> str:
    with pytest.raises(VerificationError) as refused:
        check()
    return refused.value.reason


class TestAccepts:
    def test_a_txn_token_exposes_its_transaction(self, ec_key: Key) -> None:
        claims = verifier(ec_key).verify(mint_txn(ec_key), scope=TXN_SCOPE)
        assert claims.txn == "97053963-771d-49cc-a4e3-20aad399c312"
        assert (claims.req_wl, claims.requesting_workloads, claims.replacements) == (
            "gateway",
            ("gateway",),
            0,
        )
        assert claims.tctx == {"item": "sku-42", "quantity": 3} and claims.rctx == {"req_ip": "69.151.72.123"}
        assert claims.subject_issuer == "https://idp.example" and claims.sub_id.sub == "alice"

    async def test_async_verification_is_the_same(self, ec_key: Key) -> None:
        claims = await verifier(ec_key).averify(mint_txn(ec_key))
        assert claims.scope == TXN_SCOPE

    def test_a_replaced_token_shows_its_chain(self, ec_key: Key) -> None:
        token = mint_txn(ec_key, txn_claims(req_wl="gateway,orders,billing"))
        claims = verifier(ec_key).verify(token)
        assert claims.requesting_workloads == ("gateway", "orders", "billing") and claims.replacements == 2

    def test_tctx_and_rctx_are_optional(self, ec_key: Key) -> None:
        claims = verifier(ec_key).verify(mint_txn(ec_key, txn_claims(tctx=None, rctx=None)))
        assert claims.transaction_context == {} and claims.request_context == {}

    @pytest.mark.parametrize("typ", ["txntoken+jwt", "application/txntoken+jwt", "TxnToken+JWT"])
    def test_the_media_type_may_be_spelled_in_full(self, ec_key: Key, typ: str) -> None:
        assert verifier(ec_key).verify(mint_txn(ec_key, typ=typ)).scope == TXN_SCOPE


class TestRefuses:
    @pytest.mark.parametrize(
        ("header", "expected"),
        [({"typ": "at+jwt"}, "wrong_type"), ({"typ": None}, "wrong_type"), ({"kid": None}, "malformed")],
    )
    def test_the_header_must_say_txntoken_jwt_and_name_its_key(
        self, ec_key: Key, header: dict[str, Any], expected: str
    ) -> None:
        # §9.1: typ MUST be txntoken+jwt; a purpose token (at+jwt) is never a Txn-Token.
        token = mint(ec_key, txn_claims(), **{"typ": "txntoken+jwt", **header})
        assert reason(lambda: verifier(ec_key).verify(token)) == expected

    def test_a_purpose_token_is_not_a_txn_token(self, ec_key: Key) -> None:
        assert reason(lambda: verifier(ec_key).verify(mint(ec_key, txn_claims()))) == "wrong_type"

    def test_the_signature_is_checked(self, ec_key: Key, other_ec_key: Key) -> None:
        forged = mint_txn(other_ec_key, kid=ec_key.kid)
        assert reason(lambda: verifier(ec_key).verify(forged)) == "bad_signature"
        assert reason(lambda: verifier(ec_key).verify(mint_txn(other_ec_key))) == "unknown_key"

    @pytest.mark.parametrize(
        ("claims", "expected"),
        [
            ({"aud": "elsewhere.example"}, "wrong_audience"),  # §9.2: never outside its trust domain
            ({"aud": [TRUST_DOMAIN]}, "malformed"),
            ({"iss": "https://evil.example"}, "wrong_issuer"),
            ({"exp": NOW - 11, "iat": NOW - 100}, "expired"),
            ({"iat": NOW + 60}, "expired"),
            ({"iat": NOW - 1000}, "malformed"),  # lifetime beyond the 900 s cap
            ({"txn": None}, "malformed"),
            ({"req_wl": None}, "malformed"),
            ({"sub_id": None}, "malformed"),
            ({"sub": "alice"}, "malformed"),  # sub must be sub_id's subject in its namespace
            ({"surprise": "a constraint we would skip"}, "malformed"),  # unknown claims: fail closed
            ({"tctx": ["not", "an", "object"]}, "malformed"),
        ],
    )
    def test_claims_are_checked_strictly(self, ec_key: Key, claims: dict[str, Any], expected: str) -> None:
        token = mint_txn(ec_key, txn_claims(**claims))
        assert reason(lambda: verifier(ec_key).verify(token)) == expected

    def test_a_repeated_claim_is_refused(self, ec_key: Key) -> None:
        text = json.dumps(txn_claims())[:-1] + ', "scope": "admin"}'
        token = jws.serialize_compact(
            {"alg": "ES256", "typ": "txntoken+jwt", "kid": ec_key.kid}, text, ec_key, algorithms=["ES256"]
        )
        assert reason(lambda: verifier(ec_key).verify(token)) == "malformed"

    def test_no_leeway_means_expired_at_exp(self, ec_key: Key) -> None:
        token = mint_txn(ec_key, txn_claims(iat=NOW - 60, exp=NOW))
        assert reason(lambda: verifier(ec_key, leeway=0).verify(token)) == "expired"
        assert verifier(ec_key).verify(token).exp == NOW  # the default leeway (10 s) lets it pass

    def test_configuration_mistakes_are_errors(self, ec_key: Key) -> None:
        with pytest.raises(ValueError):
            TxnTokenVerifier(trust_domain="", issuer=ISSUER, jwks=public_jwks(ec_key))
        with pytest.raises(ValueError):
            TxnTokenVerifier(
                trust_domain=TRUST_DOMAIN, issuer=ISSUER, jwks=public_jwks(ec_key), algorithms=["HS256"]
            )


    async def test_the_async_path_refuses_each_token_for_the_reason_the_sync_path_gives(
        self, ec_key: Key, other_ec_key: Key
    ) -> None:
        tokens = {
            "wrong_type": mint(ec_key, txn_claims()),
            "bad_signature": mint_txn(other_ec_key, kid=ec_key.kid),
            "unknown_key": mint_txn(other_ec_key),
            "wrong_audience": mint_txn(ec_key, txn_claims(aud="elsewhere.example")),
            "wrong_issuer": mint_txn(ec_key, txn_claims(iss="https://evil.example")),
            "expired": mint_txn(ec_key, txn_claims(exp=NOW - 11, iat=NOW - 100)),
            "malformed": mint_txn(ec_key, txn_claims(sub="alice")),
        }
        for expected, token in tokens.items():
            assert reason(lambda: verifier(ec_key).verify(token)) == expected
            with pytest.raises(VerificationError) as refused:
                await verifier(ec_key).averify(token)
            assert refused.value.reason == expected
        good = mint_txn(ec_key)
        assert verifier(ec_key).verify(good) == await verifier(ec_key).averify(good)


class TestHeader:
    def test_exactly_one_token(self) -> None:
        assert txn_token_of([]) is None
        assert txn_token_of([b" a.b.c "]) == "a.b.c"
        assert read_txn_token([]) == NO_TXN_TOKEN
        for values in (["a.b.c", "a.b.c"], ["a.b.c, d.e.f"], ["a.b.c d.e.f"], [""], ["a.b"], ["a.b.c.d.e"]):
            assert read_txn_token(values) == TWO_TXN_TOKENS, values

    def test_the_token_travels_on_unmodified(self, ec_key: Key) -> None:
        token = mint_txn(ec_key)
        verified = TxnToken(verifier(ec_key).verify(token), token)
        assert verified.headers() == {"Txn-Token": token}
