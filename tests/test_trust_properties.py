"""Properties of the trust path under arbitrary and mutated input: it refuses, it never crashes, and no
mutation of a genuine token is accepted with different content."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.app import parse_form
from exchange.errors import InvalidRequest, SubjectTokenInvalid
from exchange.trust import SubjectTrust
from exchange.verify import StaticJWKS
from schemas.config import Client, TrustedIssuer
from schemas.wire import TOKEN_TYPE_JWT
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
