# ruff: noqa: E501  (the corpus is a table: one row per line reads best)
"""The attack corpus against the downstream verifier: hostile purpose tokens, each refused with its
exact reason code on both the sync and the async path (the HTTP integrations answer every reason with
one opaque RFC 6750 `invalid_token`: tests/verify/test_asgi.py, test_litestar.py). See
docs/THREAT_MODEL.md."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from joserfc.jwk import Key

from exchange.verify import PurposeTokenVerifier, VerificationError
from tests import forge
from tests.verify.conftest import AUDIENCE, ISSUER, NOW, base_claims, public_jwks

Row = tuple[str, Callable[[Key, Key, Key], str], str]


def header(key: Key, **members: Any) -> dict[str, Any]:
    h = {"alg": "ES256", "typ": "at+jwt", "kid": key.kid, **members}
    return {name: value for name, value in h.items() if value is not None}


def es(key: Key, h: Any = None, claims: Any = None) -> str:
    return forge.sign(key, header(key) if h is None else h, base_claims() if claims is None else claims)


ROWS: list[Row] = [
    *[(f"alg-{a}", lambda k, o, r, a=a: forge.with_signature(header(k, alg=a), base_claims(), b""), "bad_signature") for a in ("none", "None", "NONE")],
    ("empty-signature", lambda k, o, r: forge.with_signature(header(k), base_claims(), b""), "bad_signature"),
    *[(f"alg-{a}", lambda k, o, r, a=a: es(k, header(k, alg=a)), "bad_signature") for a in ("HS256", "ES384", "ES256K", "es256", "")],
    *[(f"hs256-{name}", lambda k, o, r, name=name: forge.hs256(forge.public_key_encodings(r)[name], header(r, alg="HS256"), base_claims()), "bad_signature")
      for name in ("pem_spki", "der_spki", "jwk_json", "pem_pkcs1", "n_bytes", "n_b64url")],
    ("rs256-key-ec-kid", lambda k, o, r: forge.sign(r, header(k, alg="RS256"), base_claims()), "bad_signature"),
    *[(f"header-{m}", lambda k, o, r, m=m: es(k, header(k, **{m: v})), "malformed") for m, v in (
        ("jwk", {"kty": "EC"}), ("x5c", ["MIIB"]), ("jku", "http://127.0.0.1:9/k"), ("x5u", "http://127.0.0.1:9/c"),
        ("crit", ["exp"]), ("b64", False), ("cty", "JWT"), ("zip", "DEF"))],
    ("kid-traversal", lambda k, o, r: es(k, header(k, kid="../../etc/passwd")), "unknown_key"),
    ("kid-sql", lambda k, o, r: es(k, header(k, kid="' OR 1=1 --")), "unknown_key"),
    ("kid-oversize", lambda k, o, r: es(k, header(k, kid="k" * 300)), "malformed"),
    ("kid-missing", lambda k, o, r: es(k, header(k, kid=None)), "malformed"),
    ("other-key-same-kid", lambda k, o, r: es(o, header(k)), "bad_signature"),
    ("ecdsa-zeros", lambda k, o, r: forge.with_signature(header(k), base_claims(), bytes(64)), "bad_signature"),
    ("ecdsa-r-n", lambda k, o, r: forge.with_signature(header(k), base_claims(), forge.P256_N.to_bytes(32, "big") + b"\1" * 32), "bad_signature"),
    ("ecdsa-short", lambda k, o, r: forge.with_signature(header(k), base_claims(), b"\1" * 63), "bad_signature"),
    ("typ-jwt", lambda k, o, r: es(k, header(k, typ="JWT")), "wrong_type"),
    ("typ-absent", lambda k, o, r: es(k, header(k, typ=None)), "wrong_type"),
    ("typ-id-token-style", lambda k, o, r: es(k, header(k, typ="id_token+jwt")), "wrong_type"),
    ("typ-not-string", lambda k, o, r: es(k, header(k, typ=1)), "wrong_type"),
    ("dup-header", lambda k, o, r: es(k, b'{"alg":"ES256","typ":"at+jwt","kid":"%s","typ":"at+jwt"}' % k.kid.encode()), "malformed"),
    ("dup-claim-aud", lambda k, o, r: es(k, None, forge.json_with(base_claims(), b',"aud":"%s"' % AUDIENCE.encode())), "malformed"),
    ("dup-claim-scope", lambda k, o, r: es(k, None, forge.json_with(base_claims(), b',"scope":"admin"')), "malformed"),
    ("dup-claim-nested", lambda k, o, r: es(k, None, forge.json_with(base_claims(), b',"act":{"sub":"a","sub":"b"}')), "malformed"),
    ("dup-claim-escaped", lambda k, o, r: es(k, None, forge.json_with(base_claims(), b',"\\u0073ub":"mallory"')), "malformed"),
    ("payload-not-utf8", lambda k, o, r: es(k, None, b'{"iss":"\xff"}'), "malformed"),
    ("payload-array", lambda k, o, r: es(k, None, b"[]"), "malformed"),
    ("exp-float", lambda k, o, r: es(k, None, base_claims(exp=NOW + 60.5)), "malformed"),
    ("exp-bool", lambda k, o, r: es(k, None, base_claims(exp=True)), "malformed"),
    ("exp-2pow64", lambda k, o, r: es(k, None, base_claims(exp=2**64)), "malformed"),
    ("exp-1e400", lambda k, o, r: es(k, None, forge.json_with(base_claims(exp=None), b',"exp":1e400')), "malformed"),
    ("iat-negative", lambda k, o, r: es(k, None, base_claims(iat=-1)), "malformed"),
    ("sub-empty", lambda k, o, r: es(k, None, base_claims(sub="")), "malformed"),
    ("sub-number", lambda k, o, r: es(k, None, base_claims(sub=7)), "malformed"),
    ("sub-id-mismatch", lambda k, o, r: es(k, None, base_claims(sub_id={"format": "iss_sub", "iss": "https://idp", "sub": "mallory"})), "malformed"),
    ("sub-id-other-format", lambda k, o, r: es(k, None, base_claims(sub_id={"format": "email", "email": "a@b"})), "malformed"),
    ("unknown-claim", lambda k, o, r: es(k, None, base_claims(cnf={"jkt": "x"})), "malformed"),
    ("iss-trailing-slash", lambda k, o, r: es(k, None, base_claims(iss=ISSUER + "/")), "wrong_issuer"),
    ("iss-prefix", lambda k, o, r: es(k, None, base_claims(iss=ISSUER[:-1])), "wrong_issuer"),
    ("aud-other", lambda k, o, r: es(k, None, base_claims(aud="ledger")), "wrong_audience"),
    ("aud-list", lambda k, o, r: es(k, None, base_claims(aud=[AUDIENCE])), "malformed"),
    ("lifetime-over-cap", lambda k, o, r: es(k, None, base_claims(exp=NOW + 901)), "malformed"),
    ("two-segments", lambda k, o, r: es(k).rsplit(".", 1)[0], "malformed"),
    ("jwe", lambda k, o, r: "eyJhbGciOiJSU0EtT0FFUCJ9.AAAA.AAAA.AAAA.AAAA", "malformed"),
    ("json-serialised", lambda k, o, r: json.dumps(dict(zip(("protected", "payload", "signature"), es(k).split("."), strict=True))), "malformed"),
    ("non-canonical", lambda k, o, r: forge.flip_unused_bits(es(k)), "malformed"),
    ("whitespace", lambda k, o, r: es(k) + " ", "malformed"),
    ("oversized", lambda k, o, r: es(k, None, base_claims(acr="x" * 9000)), "malformed"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "make", "reason"), ROWS, ids=[row[0] for row in ROWS])
def test_hostile_purpose_token_is_refused_with_its_reason(
    ec_key: Key, other_ec_key: Key, rsa_key: Key, case: str, make: Callable[..., str], reason: str
) -> None:
    verifier = PurposeTokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key, rsa_key))
    token = make(ec_key, other_ec_key, rsa_key)
    with pytest.raises(VerificationError) as caught:
        verifier.verify(token, now=NOW)
    assert caught.value.reason == reason
    with pytest.raises(VerificationError) as again:  # the async path agrees
        import asyncio

        asyncio.run(verifier.averify(token, now=NOW))
    assert again.value.reason == reason


def test_the_genuine_token_passes(ec_key: Key, rsa_key: Key) -> None:
    verifier = PurposeTokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key, rsa_key))
    assert verifier.verify(es(ec_key), now=NOW).sub == "alice"


@pytest.mark.parametrize(("offset", "ok"), [(10 - 0.001, True), (10, False), (11, False)])
def test_expiry_at_and_beyond_the_leeway(ec_key: Key, offset: float, ok: bool) -> None:
    verifier = PurposeTokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key), leeway=10)
    token = es(ec_key, None, base_claims(exp=NOW + 60))
    if ok:
        assert verifier.verify(token, now=NOW + 60 + offset).sub == "alice"
    else:
        with pytest.raises(VerificationError) as caught:
            verifier.verify(token, now=NOW + 60 + offset)
        assert caught.value.reason == "expired"


def _flip_header_bits(token: str) -> str:
    """The same token with a set unused low bit in the header segment's last character."""
    header, rest = token.split(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(header) % 4 in (2, 3)
    return header[:-1] + alphabet[alphabet.index(header[-1]) | 1] + "." + rest


def _padded_header(key: Key) -> dict[str, Any]:
    """The usual header plus a harmless member sized so its base64url has unused bits to flip."""
    for n in range(3):
        h = header(key, note="x" * n)
        if len(forge.b64(forge.encode(h))) % 4 in (2, 3):
            return h
    raise AssertionError("unreachable: three lengths cover every residue")


def test_a_warm_verifier_refuses_every_row_alike(ec_key: Key, other_ec_key: Key, rsa_key: Key) -> None:
    """The fast paths change no decision: a verifier that has just verified genuine tokens (its header
    memo and its fitted keys warm) refuses every row of the corpus with the same reason, both paths."""
    import asyncio

    verifier = PurposeTokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key, rsa_key))
    genuine = [es(ec_key), forge.sign(rsa_key, header(rsa_key, alg="RS256"), base_claims())]
    for case, make, reason in ROWS:
        for token in genuine:
            assert verifier.verify(token, now=NOW).sub == "alice"
        hostile = make(ec_key, other_ec_key, rsa_key)
        with pytest.raises(VerificationError) as caught:
            verifier.verify(hostile, now=NOW)
        assert (case, caught.value.reason) == (case, reason)
        with pytest.raises(VerificationError) as again:
            asyncio.run(verifier.averify(hostile, now=NOW))
        assert (case, again.value.reason) == (case, reason)


# Spellings of a header the verifier has just accepted: each is parsed and checked in full (the memo
# is keyed by the exact segment), so what the full check refuses stays refused.
HEADER_SPELLINGS: list[tuple[str, Callable[[Key, str], str], str]] = [
    ("unused-bits-set", lambda k, genuine: _flip_header_bits(genuine), "malformed"),
    ("extra-character", lambda k, genuine: genuine.replace(".", "A.", 1), "malformed"),
    ("repeated-member", lambda k, genuine: es(k, forge.encode(_padded_header(k))[:-1] + b',"alg":"none"}'), "malformed"),
    ("escaped-repeat", lambda k, genuine: es(k, forge.encode(_padded_header(k))[:-1] + b',"\\u0061lg":"HS256"}'), "malformed"),
    ("other-alg-same-kid", lambda k, genuine: es(k, {**_padded_header(k), "alg": "ES384"}), "bad_signature"),
    ("other-typ-same-kid", lambda k, genuine: es(k, {**_padded_header(k), "typ": "JWT"}), "wrong_type"),
    ("signature-of-another-token", lambda k, genuine: genuine.rsplit(".", 1)[0] + "." + es(k, _padded_header(k), base_claims(sub="mallory")).rsplit(".", 1)[1], "bad_signature"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "make", "reason"), HEADER_SPELLINGS, ids=[row[0] for row in HEADER_SPELLINGS]
)
def test_a_remembered_header_lets_no_other_spelling_through(
    ec_key: Key, case: str, make: Callable[[Key, str], str], reason: str
) -> None:
    verifier = PurposeTokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=public_jwks(ec_key))
    genuine = es(ec_key, _padded_header(ec_key))
    assert verifier.verify(genuine, now=NOW).sub == "alice"
    with pytest.raises(VerificationError) as caught:
        verifier.verify(make(ec_key, genuine), now=NOW)
    assert caught.value.reason == reason
    assert verifier.verify(genuine, now=NOW).sub == "alice"  # and the memo still holds the genuine one
