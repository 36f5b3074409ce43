"""The verification core (exchange.verify.jws) and its shared decoding (exchange.verify.strictjson)."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import msgspec
import pytest
from joserfc import jws
from joserfc.jwk import ECKey, Key

from exchange.verify import JWSError, JWSVerifier, StaticJWKS, key_source
from exchange.verify.jwks import JWKSCache, JWKSError, parse_jwks
from exchange.verify.strictjson import AmbiguousJSON, decode_object, is_numeric_date, refuse_duplicates
from tests import forge
from tests.verify.conftest import public_jwks


def sign(key: Key, header: dict[str, Any], payload: bytes = b'{"sub":"alice"}') -> str:
    return jws.serialize_compact(header, payload, key, algorithms=[header["alg"]])


def problem(core: JWSVerifier, token: str, keys: Any) -> str:
    with pytest.raises(JWSError) as caught:
        core.verify_cached(token, keys)
    return caught.value.problem


class TestStrictJSON:
    @pytest.mark.parametrize(
        "text",
        [
            b'{"a":1,"a":1}',
            b'{"a":{"b":1,"b":2}}',
            b'{"a":[{"b":1},{"c":1,"c":1}]}',
            b'{"a":1,"\\u0061":2}',  # the same name, escaped
            b'{"x":"\\u003a","a":1,"a":2}',  # an escaped colon must not balance a dropped member
            b'{"s":"a:b","s":"c"}',
        ],
    )
    def test_a_repeated_member_name_is_refused_at_any_depth(self, text: bytes) -> None:
        with pytest.raises(AmbiguousJSON) as caught:
            decode_object(text)
        assert caught.value.duplicate

    @pytest.mark.parametrize(
        "text",
        [b'{"a":1,"b":{"a":1}}', b'{"u":"https://x:1/a:b","n":null,"f":1e2}', b'{"e":"\\"q\\":1"}'],
    )
    def test_distinct_names_pass(self, text: bytes) -> None:
        assert decode_object(text) == json.loads(text)

    @pytest.mark.parametrize(
        "text", [b"[1]", b'"s"', b"1", b'{"a":NaN}', b'{"a":1e400}', b"\xff{}", b'{"a":1', b""]
    )
    def test_anything_but_one_json_object_is_refused(self, text: bytes) -> None:
        with pytest.raises(AmbiguousJSON) as caught:
            decode_object(text)
        assert not caught.value.duplicate

    def test_a_struct_is_checked_by_its_own_wire_names(self) -> None:
        class Claims(msgspec.Struct, omit_defaults=True):
            iss: str = msgspec.field(name="i")
            n: int | None = None

        refuse_duplicates(b'{"i":"a:b"}', msgspec.json.decode(b'{"i":"a:b"}', type=Claims))
        with pytest.raises(AmbiguousJSON):
            refuse_duplicates(b'{"i":"x","i":"a"}', msgspec.json.decode(b'{"i":"x","i":"a"}', type=Claims))

    @pytest.mark.parametrize(
        ("value", "ok"),
        [(0, True), (1_900_000_000, True), (253_402_300_799, True), (253_402_300_800, False), (-1, False),
         (1.0, False), (True, False), (2**64, False), (float("nan"), False), ("1", False), (None, False)],
    )  # fmt: skip
    def test_numeric_dates_are_integers_in_range(self, value: Any, ok: bool) -> None:
        assert is_numeric_date(value) is ok


class TestCore:
    def test_a_kid_names_the_key_of_the_source_the_caller_gave(self, ec_key: Key, other_ec_key: Key) -> None:
        core = JWSVerifier(algorithms=["ES256"])
        token = sign(ec_key, {"alg": "ES256", "kid": ec_key.kid})
        assert core.verify_cached(token, StaticJWKS(public_jwks(ec_key))).key.kid == ec_key.kid
        # The same token against another identity's source: its kid is unknown there.
        assert problem(core, token, StaticJWKS(public_jwks(other_ec_key))) == "unknown_kid"

    def test_without_a_kid_each_key_of_the_source_is_tried(
        self, ec_key: Key, other_ec_key: Key, rsa_key: Key
    ) -> None:
        core = JWSVerifier(algorithms=["ES256", "RS256"], require_kid=False)
        keys = StaticJWKS(public_jwks(rsa_key, other_ec_key, ec_key))
        verified = core.verify_cached(sign(ec_key, {"alg": "ES256"}), keys)
        assert verified.key.kid == ec_key.kid and verified.payload == b'{"sub":"alice"}'
        assert problem(core, sign(ec_key, {"alg": "ES256"}), StaticJWKS(public_jwks(other_ec_key))) == (
            "bad_signature"
        )

    def test_a_kid_is_required_unless_the_policy_says_otherwise(self, ec_key: Key) -> None:
        token = sign(ec_key, {"alg": "ES256"})
        assert (
            problem(JWSVerifier(algorithms=["ES256"]), token, StaticJWKS(public_jwks(ec_key)))
            == "missing_kid"
        )

    def test_typ_policy(self, ec_key: Key) -> None:
        keys = StaticJWKS(public_jwks(ec_key))
        core = JWSVerifier(algorithms=["ES256"], typ=["at+jwt"])
        assert problem(core, sign(ec_key, {"alg": "ES256", "kid": ec_key.kid}), keys) == "wrong_type"
        assert (
            problem(core, sign(ec_key, {"alg": "ES256", "kid": ec_key.kid, "typ": "JWT"}), keys)
            == "wrong_type"
        )
        assert core.verify_cached(sign(ec_key, {"alg": "ES256", "kid": ec_key.kid, "typ": "AT+JWT"}), keys)
        lenient = JWSVerifier(algorithms=["ES256"], typ=[None, "jwt"])
        assert lenient.verify_cached(sign(ec_key, {"alg": "ES256", "kid": ec_key.kid}), keys)

    def test_the_header_memo_is_per_policy(self, ec_key: Key) -> None:
        keys = StaticJWKS(public_jwks(ec_key))
        token = sign(ec_key, {"alg": "ES256", "kid": ec_key.kid, "typ": "JWT"})
        lenient = JWSVerifier(algorithms=["ES256"])
        strict = JWSVerifier(algorithms=["ES256"], typ=["at+jwt"])
        assert lenient.verify_cached(token, keys)
        # A header remembered under one policy is never waved through under another.
        assert problem(strict, token, keys) == "wrong_type"
        assert problem(JWSVerifier(algorithms=["RS256"]), token, keys) == "algorithm_not_allowed"

    def test_a_fitted_key_is_remembered_per_key_object_not_per_kid(
        self, ec_key: Key, other_ec_key: Key
    ) -> None:
        # Two identities publishing different keys under one kid: the key fitted for the first is
        # never used for the second, whose own key decides.
        mine = ECKey.import_key({**ec_key.as_dict(private=False), "kid": "shared"})
        theirs = ECKey.import_key({**other_ec_key.as_dict(private=False), "kid": "shared"})
        core = JWSVerifier(algorithms=["ES256"])
        token = sign(ec_key, {"alg": "ES256", "kid": "shared"})
        assert core.verify_cached(token, StaticJWKS({"keys": [mine.as_dict()]})).key.kid == "shared"
        assert problem(core, token, StaticJWKS({"keys": [theirs.as_dict()]})) == "bad_signature"
        assert core.verify_cached(token, StaticJWKS({"keys": [mine.as_dict()]}))

    def test_a_key_fitted_for_one_algorithm_is_fitted_again_for_another(
        self, ec_key: Key, rsa_key: Key
    ) -> None:
        keys = StaticJWKS(public_jwks(ec_key, rsa_key))
        core = JWSVerifier(algorithms=["ES256", "ES384", "RS256", "PS256"])
        assert core.verify_cached(sign(ec_key, {"alg": "ES256", "kid": ec_key.kid}), keys)
        # A P-256 key never checks ES384, whatever it checked before.
        es384 = forge.with_signature({"alg": "ES384", "kid": ec_key.kid}, {"sub": "alice"}, bytes(96))
        assert problem(core, es384, keys) == "algorithm_key_mismatch"
        # An RSA key without an alg member checks RS256 and PS256 tokens, each with its own padding:
        # a PKCS#1 v1.5 signature relabelled PS256 does not verify.
        rs256 = sign(rsa_key, {"alg": "RS256", "kid": rsa_key.kid})
        assert core.verify_cached(rs256, keys)
        relabelled = forge.with_signature(
            {"alg": "PS256", "kid": rsa_key.kid}, b'{"sub":"alice"}', forge.b64decode(rs256.rsplit(".", 1)[1])
        )
        assert problem(core, relabelled, keys) == "bad_signature"
        assert core.verify_cached(sign(rsa_key, {"alg": "PS256", "kid": rsa_key.kid}), keys)

    def test_the_fitted_key_memo_is_bounded(self, ec_key: Key) -> None:
        core = JWSVerifier(algorithms=["ES256"])
        token = sign(ec_key, {"alg": "ES256", "kid": ec_key.kid})
        for _ in range(200):  # a new key object per refetch of the same set
            assert core.verify_cached(token, StaticJWKS(public_jwks(ec_key)))
        assert len(core._keys) <= 64

    def test_a_header_with_a_repeated_member_is_refused(self, ec_key: Key) -> None:
        header = b'{"alg":"ES256","kid":"%s","alg":"none"}' % ec_key.kid.encode()
        from exchange.verify.compact import b64url_encode

        token = (b64url_encode(header) + b"." + b64url_encode(b"{}") + b".AAAA").decode()
        assert problem(JWSVerifier(algorithms=["ES256"]), token, StaticJWKS(public_jwks(ec_key))) == (
            "duplicate_member"
        )

    @pytest.mark.parametrize("names", [["HS256"], ["none"], [], ["ES256", "HS256"]])
    def test_symmetric_or_empty_allow_lists_are_programming_errors(self, names: list[str]) -> None:
        with pytest.raises(ValueError):
            JWSVerifier(algorithms=names)

    def test_algorithms_is_a_collection_not_a_string(self) -> None:
        with pytest.raises(TypeError):
            JWSVerifier(algorithms="ES256")


class TestKeySource:
    def test_one_factory_for_every_kind_of_key_source(self, ec_key: Key, tmp_path: Any) -> None:
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps(public_jwks(ec_key)))
        assert isinstance(key_source(jwks_file=path), StaticJWKS)
        assert isinstance(key_source(jwks=public_jwks(ec_key)), StaticJWKS)
        uri = key_source(jwks_uri="https://idp.test/keys")
        assert isinstance(uri, JWKSCache) and uri.uri == "https://idp.test/keys"
        derived = key_source(issuer="https://exchange.test/")
        assert isinstance(derived, JWKSCache) and derived.uri == "https://exchange.test/.well-known/jwks.json"
        with pytest.raises(ValueError):
            key_source(jwks_file=path, jwks_uri="https://idp.test/keys")
        with pytest.raises(ValueError):
            key_source()
        with pytest.raises(ValueError):
            key_source(jwks_uri="http://idp.test/keys")  # plain http off loopback


def _rsa_jwk(bits: int, e: int, kid: str) -> dict[str, Any]:
    n = secrets.randbits(bits) | (1 << (bits - 1)) | 1

    def b64int(value: int) -> str:
        return (
            base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big"))
            .decode()
            .rstrip("=")
        )

    return {"kty": "RSA", "n": b64int(n), "e": b64int(e), "kid": kid}


class TestJWKSHygiene:
    @pytest.mark.parametrize(
        ("bits", "e"), [(1024, 65537), (2047, 65537), (8193, 65537), (2048, 3), (2048, 17), (2048, 2**64 + 1)]
    )
    def test_rsa_keys_outside_2048_to_8192_bits_or_with_odd_exponents_are_ignored(
        self, bits: int, e: int, ec_key: Key
    ) -> None:
        jwks = {"keys": [_rsa_jwk(bits, e, "odd"), ec_key.as_dict(private=False)]}
        assert StaticJWKS(jwks).kids == {ec_key.kid}

    @pytest.mark.parametrize("bits", [2048, 4096, 8192])
    def test_rsa_keys_in_range_are_kept(self, bits: int) -> None:
        assert StaticJWKS({"keys": [_rsa_jwk(bits, 65537, "fine")]}).kids == {"fine"}

    def test_an_oversized_key_set_is_refused_whole(self, ec_key: Key) -> None:
        one = ec_key.as_dict(private=False)
        with pytest.raises(JWKSError):
            StaticJWKS({"keys": [{**one, "kid": f"k{n}"} for n in range(33)]})

    def test_an_overlong_kid_is_ignored(self, ec_key: Key, rsa_key: Key) -> None:
        keys = [{**ec_key.as_dict(private=False), "kid": "k" * 257}, rsa_key.as_dict(private=False)]
        assert StaticJWKS({"keys": keys}).kids == {rsa_key.kid}

    def test_a_jwks_document_with_a_repeated_member_is_refused(self, ec_key: Key) -> None:
        jwk = json.dumps(ec_key.as_dict(private=False))
        doubled = jwk[:-1] + ', "x": "' + ec_key.as_dict(private=False)["y"] + '"}'
        with pytest.raises(JWKSError):
            parse_jwks(('{"keys": [' + doubled + "]}").encode())
