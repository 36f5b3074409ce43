"""Properties of the trust path under arbitrary and mutated input: it refuses, it never crashes, and no
mutation of a genuine token is accepted with different content."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qsl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.endpoint import _KNOWN, parse_form
from exchange.errors import InvalidRequest, SubjectTokenInvalid
from exchange.trust import SubjectTrust
from exchange.verify import StaticJWKS
from schemas.config import Client, TrustedIssuer
from schemas.wire import TOKEN_TYPE_JWT, TokenRequest
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
