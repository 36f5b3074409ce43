"""The verifier's fast paths decide exactly as the slow paths they stand in for, on arbitrary and
adversarial inputs (hypothesis), not only on the tokens the benches use:

- duplicate-member refusal (`strictjson.refuse_duplicates`): the round-trip and colon-count tiers
  against a plain reading with the standard library's `object_pairs_hook`, for dicts and for the
  purpose-token claims Struct, with repeated names at any depth, escapes, whitespace and colons in
  strings.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.verify.claims import CLAIMS_DECODER
from exchange.verify.strictjson import AmbiguousJSON, decode_object, refuse_duplicates
from tests.verify.conftest import base_claims

# --- duplicate members -------------------------------------------------------------------------------


class _Dup(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({name for name, _ in pairs}) != len(pairs):
        raise _Dup
    return dict(pairs)


def has_duplicate(text: bytes) -> bool:
    """The slow, obvious reading: does any object in `text` repeat a member name?"""
    try:
        json.loads(text, object_pairs_hook=_pairs)
    except _Dup:
        return True
    return False


# Names from a small alphabet so that repeats are common; the characters that fool a naive count (a
# colon, a quote, a backslash) and one that JSON may spell escaped.
_NAMES = st.text(alphabet='ab:"\\é', min_size=0, max_size=3)
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64), st.text(alphabet='a:"\\\n', max_size=4)
)


@st.composite
def spelled(draw: st.DrawFn, value: Any, depth: int = 0) -> str:
    """One JSON spelling of a member list / list / scalar: whitespace, escapes and repeats chosen."""
    space = draw(st.sampled_from(["", "", " ", "\n "]))
    if isinstance(value, list) and value and isinstance(value[0], tuple):  # an object's members
        members = []
        for name, inner in value:
            members.append(f"{_string(draw, name)}{space}:{space}{draw(spelled(inner, depth + 1))}")
        return "{" + ("," + space).join(members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(draw(spelled(item, depth + 1)) for item in value) + "]"
    if isinstance(value, str):
        return _string(draw, value)
    return json.dumps(value)


def _string(draw: st.DrawFn, text: str) -> str:
    if draw(st.booleans()):
        return json.dumps(text, ensure_ascii=draw(st.booleans()))
    # Every character escaped as \\uXXXX: the same name, spelled differently.
    return '"' + "".join(f"\\u{ord(c):04x}" for c in text) + '"'


_MEMBER_LISTS = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(st.tuples(_NAMES, inner), min_size=1, max_size=4),
    ),
    max_leaves=12,
)
_OBJECTS = st.lists(st.tuples(_NAMES, _MEMBER_LISTS), min_size=1, max_size=5)


class TestDuplicateRefusal:
    @settings(max_examples=600, deadline=None)
    @given(st.data())
    def test_every_tier_refuses_exactly_the_texts_with_a_repeated_name(self, data: st.DataObject) -> None:
        text = data.draw(spelled(data.draw(_OBJECTS))).encode()
        duplicate = has_duplicate(text)
        try:
            decode_object(text)
        except AmbiguousJSON as exc:
            assert exc.duplicate and duplicate, text
        else:
            assert not duplicate, text

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_a_text_that_round_trips_has_no_repeated_name(self, data: st.DataObject) -> None:
        # Tier 1 on its own: what re-encodes byte for byte is the encoder's output, one member per key.
        text = data.draw(spelled(data.draw(_OBJECTS))).encode()
        if msgspec.json.encode(msgspec.json.decode(text)) == text:
            assert not has_duplicate(text)

    @settings(max_examples=400, deadline=None)
    @given(
        extra=st.lists(
            st.sampled_from(["iss", "aud", "sub", "exp", "scope", "jti", "client_id", "acr"]), max_size=2
        ),
        position=st.integers(0, 20),
        nested=st.booleans(),
        spaced=st.booleans(),
        same=st.booleans(),
    )
    def test_the_claims_struct_refuses_exactly_the_repeated_claims(
        self, extra: list[str], position: int, nested: bool, spaced: bool, same: bool
    ) -> None:
        claims = base_claims(acr="urn:mfa", authorization_details=[{"type": "payment", "amount": "1:00"}])
        members = [f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'))}" for k, v in claims.items()]
        # A repeat of a claim (same value or not: the second is what msgspec keeps), at any position.
        for name in extra:
            value = claims[name] if same else claims[name] + (1 if name == "exp" else "x")
            members.insert(position % (len(members) + 1), f'"{name}":{json.dumps(value)}')
        if nested:  # a repeated member inside an authorization_details object
            members = [m.replace('"amount":"1:00"', '"amount":"1:00","amount":"2:00"') for m in members]
        text = ("{" + (", " if spaced else ",").join(members) + "}").encode()
        duplicate = has_duplicate(text)
        try:
            decoded = CLAIMS_DECODER.decode(text)
        except msgspec.DecodeError:
            return  # a value msgspec refuses on its own (not the property under test)
        try:
            refuse_duplicates(text, decoded)
        except AmbiguousJSON as exc:
            assert exc.duplicate and duplicate, text
        else:
            assert not duplicate, text

    def test_the_exchanges_own_spelling_takes_the_round_trip(self) -> None:
        # Compact JSON in the claims' field order (how the exchange mints with msgspec) re-encodes to
        # itself; the same claims with spaces do not, and still pass by the colon count.
        claims = CLAIMS_DECODER.decode(json.dumps(base_claims()).encode())
        compact = msgspec.json.encode(claims)
        assert msgspec.json.encode(CLAIMS_DECODER.decode(compact)) == compact
        refuse_duplicates(compact, CLAIMS_DECODER.decode(compact))
        spaced = json.dumps(json.loads(compact)).encode()
        assert spaced != compact
        refuse_duplicates(spaced, CLAIMS_DECODER.decode(spaced))
