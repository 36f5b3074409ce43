"""Properties of the trust path under arbitrary and mutated input: it refuses, it never crashes, and no
mutation of a genuine token is accepted with different content."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jws

from exchange.endpoint import _KNOWN, parse_form
from exchange.errors import InvalidRequest, SubjectTokenInvalid
from exchange.trust import SubjectTrust, issued_to
from exchange.verify import StaticJWKS
from exchange.verify.strictjson import is_numeric_date
from schemas.claims import AT_JWT_TYPS
from schemas.config import Client, TrustedIssuer
from schemas.wire import TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT, TokenRequest
from tests.idp import FakeIdP

IDP = FakeIdP("https://idp.example.com", "idp_ec", "ES256")
TRUST = SubjectTrust(
    [
        (
            TrustedIssuer(issuer=IDP.issuer, audiences=["purpose-exchange"], algorithms=["ES256"]),
            StaticJWKS(IDP.jwks()),
        )
    ],
    max_token_bytes=8192,
)
GENUINE = IDP.token(exp=int(time.time()) + 86400, azp="bank-web")
PRESENTER = Client(client_id="bank-web")
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def validate(token: str) -> object:
    return asyncio.run(TRUST.validate(token, TOKEN_TYPE_JWT, presenter=PRESENTER))


def test_the_genuine_token_is_accepted() -> None:
    assert validate(GENUINE).claims["sub"] == "alice"  # type: ignore[attr-defined]


@FAST
@given(st.text(max_size=400))
def test_arbitrary_text_is_refused_never_crashes(text: str) -> None:
    with pytest.raises(SubjectTokenInvalid):
        validate(text)


@FAST
@given(
    st.integers(min_value=0, max_value=len(GENUINE) - 1),
    st.sampled_from('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ {}"\\\x00é'),
    st.sampled_from(["replace", "insert", "delete"]),
)
def test_no_mutation_of_a_genuine_token_is_accepted_with_other_content(
    index: int, char: str, how: str
) -> None:
    if how == "replace":
        mutated = GENUINE[:index] + char + GENUINE[index + 1 :]
    elif how == "insert":
        mutated = GENUINE[:index] + char + GENUINE[index:]
    else:
        mutated = GENUINE[:index] + GENUINE[index + 1 :]
    try:
        accepted = validate(mutated)
    except SubjectTokenInvalid:
        return
    # Only a change in the unused low bits of the last base64 character can survive, and then the
    # token says exactly what the issuer signed.
    assert dict(accepted.claims) == dict(validate(GENUINE).claims)  # type: ignore[attr-defined]


@FAST
@given(st.binary(max_size=600))
def test_arbitrary_form_bodies_are_parsed_or_refused_cleanly(body: bytes) -> None:
    try:
        parse_form(body)
    except InvalidRequest:
        pass


def parsed_by_parse_qsl(body: bytes) -> TokenRequest | str:
    """What the form parser answered when it was urllib's parse_qsl (the reference): the request, or
    the description of its refusal."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), max_num_fields=32, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return "malformed form body"
    single: dict[str, str] = {}
    many: dict[str, list[str]] = {"audience": [], "resource": []}
    for name, value in pairs:
        if name in many:
            many[name].append(value)
        elif name in TokenRequest.__struct_fields__:
            if name in single:
                return f"parameter {name} is repeated"
            single[name] = value
    return TokenRequest(audience=tuple(many["audience"]), resource=tuple(many["resource"]), **single)


def parsed(body: bytes) -> TokenRequest | str:
    try:
        return parse_form(body)
    except InvalidRequest as exc:
        return exc.description


_PIECES = st.sampled_from(
    ["grant_type", "scope", "audience", "resource", "client_id", "subject_token", "x", "",
     "=", "&", "+", "%", "%2", "%41", "%zz", "%C3%A9", "%C3", "%FF", "%00", "a+b", "é", "\x00", ";"]
)  # fmt: skip


@FAST
@given(st.one_of(st.binary(max_size=600), st.lists(_PIECES, max_size=60).map(lambda p: "".join(p).encode())))
def test_the_form_parser_reads_exactly_what_parse_qsl_reads(body: bytes) -> None:
    assert parsed(body) == parsed_by_parse_qsl(body)


def test_a_form_with_too_many_fields_is_refused_like_parse_qsl_refuses_it() -> None:
    body = b"&".join([b"scope=a"] + [b"x=1"] * 31)
    assert parsed(body) == parsed_by_parse_qsl(body) != "malformed form body"
    assert parsed(body + b"&x=1") == parsed_by_parse_qsl(body + b"&x=1") == "malformed form body"


def test_the_well_known_urns_read_from_the_table_are_what_parse_qsl_reads() -> None:
    # parse_form reads the percent-encoded URNs of every request from a fixed table (exchange/endpoint.py).
    assert len(_KNOWN) >= 16
    for spelling, value in _KNOWN.items():
        for name in ("grant_type", "subject_token_type", "requested_token_type", "client_assertion_type"):
            body = f"{name}={spelling}&scope=a".encode()
            assert parsed(body) == parsed_by_parse_qsl(body)
            assert getattr(parse_form(body), name) == value


# The claims policy of subject tokens as it was written before it was made cheaper (main c38d089):
# the reference the current one must agree with, reason for reason, on any claims and any presenter.
def reference_issued_to(claims: dict[str, Any], our_audiences: frozenset[str]) -> frozenset[str] | None:
    named = [value for value in (claims.get("azp"), claims.get("client_id")) if value is not None]
    if named:
        if not all(isinstance(value, str) and value for value in named) or len(set(named)) != 1:
            return None
        return frozenset(named)
    aud = claims.get("aud")
    auds = (
        [aud]
        if isinstance(aud, str)
        else [a for a in aud if isinstance(a, str)]
        if isinstance(aud, list)
        else []
    )
    others = [a for a in auds if a not in our_audiences]
    if len(others) > 1:
        return None
    return frozenset(others) if others else frozenset(auds)


def reference_reason(
    claims: dict[str, Any],
    typ: str | None,
    declared: str,
    presenter: Client | None,
    now: float,
    *,
    require_at_jwt_typ: bool,
) -> str | None:
    leeway, audiences = 30, frozenset(OURS)
    exp = claims.get("exp")
    if exp is None:
        return "missing_exp"
    if not is_numeric_date(exp):
        return "bad_numeric_date"
    if now >= exp + leeway:
        return "expired"
    nbf = claims.get("nbf")
    if nbf is not None and not is_numeric_date(nbf):
        return "bad_numeric_date"
    if nbf is not None and now < nbf - leeway:
        return "not_yet_valid"
    for name in ("iat", "auth_time"):
        value = claims.get(name)
        if value is not None and not is_numeric_date(value):
            return "bad_numeric_date"
    iat = claims.get("iat")
    if iat is not None and iat > now + leeway:
        return "issued_in_future"
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        return "missing_sub"
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not audiences.intersection(a for a in auds if isinstance(a, str)):
        return "wrong_audience"
    is_at = typ is not None and typ.lower() in AT_JWT_TYPS
    if declared == TOKEN_TYPE_ID_TOKEN and is_at:
        return "access_token_declared_as_id_token"
    if declared == TOKEN_TYPE_ACCESS_TOKEN and not is_at and require_at_jwt_typ:
        return "not_an_access_token"
    if presenter is not None:
        parties = reference_issued_to(claims, audiences)
        if parties is None:
            return "ambiguous_party"
        if presenter.client_id not in parties and parties.isdisjoint(presenter.tokens_issued_to):
            return "not_issued_to_client"
    return None


OURS = ("purpose-exchange", "purpose-exchange-2")
NOW = int(time.time())
_ABSENT = object()
_NAMES = st.sampled_from(["purpose-exchange", "purpose-exchange-2", "bank-web", "batch", "", "BANK-WEB"])
_JSONISH = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
)
_TIME = st.one_of(
    st.sampled_from([NOW + d for d in (-31, -30, -29, 0, 29, 30, 31, 3600)]),  # the leeway's edges
    st.just(_ABSENT),
    st.integers(min_value=NOW - 120, max_value=NOW + 120),
    st.sampled_from([0, -1, 253402300799, 253402300800, float(NOW), True]),
    _JSONISH,
)
_PARTY = st.one_of(st.just(_ABSENT), _NAMES, _JSONISH, st.lists(_NAMES, max_size=2))
_AUD = st.one_of(
    st.just(_ABSENT), _NAMES, _JSONISH, st.lists(st.one_of(_NAMES, st.integers(0, 3), st.none()), max_size=4)
)
_CLAIMS = st.fixed_dictionaries(
    {
        "exp": _TIME,
        "nbf": _TIME,
        "iat": _TIME,
        "auth_time": _TIME,
        "sub": st.one_of(st.just(_ABSENT), st.sampled_from(["alice", ""]), _JSONISH),
        "aud": _AUD,
        "azp": _PARTY,
        "client_id": _PARTY,
    }
).map(lambda c: {"iss": IDP.issuer, **{k: v for k, v in c.items() if v is not _ABSENT}})
_PRESENTERS = st.sampled_from(
    [
        None,
        PRESENTER,
        Client(client_id="batch"),
        Client(client_id="batch", tokens_issued_to=["bank-web"]),
        Client(client_id="batch", tokens_issued_to=["purpose-exchange"]),
    ]
)
_TRUSTS = {
    require: SubjectTrust(
        [
            (
                TrustedIssuer(
                    issuer=IDP.issuer,
                    audiences=list(OURS),
                    algorithms=["ES256"],
                    require_at_jwt_typ=require,
                ),
                StaticJWKS(IDP.jwks()),
            )
        ],
        max_token_bytes=8192,
    )
    for require in (False, True)
}


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _CLAIMS,
    st.sampled_from([None, "JWT", "at+jwt", "AT+JWT", "application/at+jwt"]),
    st.sampled_from([TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT]),
    _PRESENTERS,
    st.booleans(),
)
def test_the_claims_policy_decides_as_the_reference_does_on_any_claims(
    claims: dict[str, Any], typ: str | None, declared: str, presenter: Client | None, require: bool
) -> None:
    header = {"alg": "ES256", "kid": IDP.kid, **({"typ": typ} if typ is not None else {})}
    token = jws.serialize_compact(header, msgspec.json.encode(claims), IDP.key, algorithms=["ES256"])
    expected = reference_reason(claims, typ, declared, presenter, NOW, require_at_jwt_typ=require)
    trust = _TRUSTS[require]
    for _ in range(2):  # the second time from memory when the first was accepted
        try:
            verified = asyncio.run(trust.validate(token, declared, presenter=presenter, now=NOW))
        except SubjectTokenInvalid as exc:
            assert exc.reason == f"subject_token:{expected}"
        else:
            assert expected is None
            assert dict(verified.claims) == claims and verified.typ == typ and verified.kid == IDP.kid
    assert issued_to(claims, frozenset(OURS)) == reference_issued_to(claims, frozenset(OURS))


@pytest.mark.parametrize("name", ["exp", "nbf", "iat", "auth_time"])
@pytest.mark.parametrize("offset", [-3601, -31, -30, -29, 0, 29, 30, 31, 3601])
@pytest.mark.parametrize("presenter", [PRESENTER, Client(client_id="batch")])
def test_each_time_claim_at_the_leeways_edges_decides_as_the_reference_does(
    name: str, offset: int, presenter: Client
) -> None:
    claims = {"iss": IDP.issuer, "sub": "alice", "aud": OURS[0], "azp": "bank-web", "exp": NOW + 60}
    claims[name] = NOW + offset
    token = jws.serialize_compact(
        {"alg": "ES256", "kid": IDP.kid}, msgspec.json.encode(claims), IDP.key, algorithms=["ES256"]
    )
    expected = reference_reason(claims, None, TOKEN_TYPE_JWT, presenter, NOW, require_at_jwt_typ=False)
    try:
        asyncio.run(_TRUSTS[False].validate(token, TOKEN_TYPE_JWT, presenter=presenter, now=NOW))
    except SubjectTokenInvalid as exc:
        assert exc.reason == f"subject_token:{expected}"
    else:
        assert expected is None
