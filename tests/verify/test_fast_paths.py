"""The verifier's fast paths decide exactly as the slow paths they stand in for, on arbitrary and
adversarial inputs (hypothesis), not only on the tokens the benches use:

- duplicate-member refusal (`strictjson.refuse_duplicates`): the round-trip and colon-count tiers
  against a plain reading with the standard library's `object_pairs_hook`, for dicts and for the
  purpose-token claims Struct, with repeated names at any depth, escapes, whitespace and colons in
  strings;
- the strict compact parse (`compact.split_parts`: dots by `rpartition` and `partition`, two inlined
  base64url decodes) against `split(b".")` and `b64url_decode` per segment, and `b64url_decode`
  against its definition (the alphabet, and the one text that encodes the bytes);
- the r || s to DER conversion (`jws.der_signature`) against cryptography's `encode_dss_signature`;
- the key a header remembers (`_Header.prepared`) never checks a signature for another key object,
  even under the same kid, in any order of calls.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, Key

from exchange.verify import JWSError, JWSVerifier, PurposeTokenVerifier, StaticJWKS, VerificationError
from exchange.verify.claims import CLAIMS_DECODER
from exchange.verify.compact import b64url_decode, b64url_encode, split_compact, split_parts
from exchange.verify.jws import der_signature
from exchange.verify.strictjson import AmbiguousJSON, decode_object, refuse_duplicates
from tests import forge
from tests.verify.conftest import AUDIENCE, ISSUER, NOW, base_claims

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


# --- strict compact parse ----------------------------------------------------------------------------


def slow_split(token: str | bytes, max_bytes: int) -> tuple[bytes, bytes, bytes, bytes]:
    """The plain reading: size, ASCII, split on every dot, three segments, strict decode of each."""
    if len(token) > max_bytes:
        raise JWSError("oversized", "")
    value = token.encode("ascii") if isinstance(token, str) else token  # UnicodeEncodeError: refused
    if value[:1] == b"{":
        raise JWSError("malformed", "")
    segments = value.split(b".")
    if len(segments) != 3:
        raise JWSError("malformed", "")
    header, payload, signature = segments
    try:
        return header + b"." + payload, header, b64url_decode(payload), b64url_decode(signature)
    except (ValueError, binascii.Error):
        raise JWSError("malformed", "") from None


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TOKEN_CHARS = st.sampled_from(list(_B64URL[::7] + "AQgw-_" + ".+/= {\n\x00é"))


def _decision(fn: Any, token: str | bytes) -> Any:
    try:
        return fn(token, 300)
    except JWSError as exc:
        return exc.problem
    except UnicodeEncodeError:
        return "malformed"


class TestStrictParse:
    @settings(max_examples=1500, deadline=None)
    @given(st.text(_TOKEN_CHARS, max_size=40), st.booleans())
    def test_the_fast_split_decides_as_split_on_every_dot(self, token: str, as_bytes: bool) -> None:
        value: str | bytes = token.encode("utf-8") if as_bytes else token
        assert _decision(split_parts, value) == _decision(slow_split, value)

    @settings(max_examples=500, deadline=None)
    @given(
        st.binary(max_size=40),
        st.binary(max_size=70),
        st.sampled_from(["", ".", "..", "=", "==", "+", "/", " ", "A", "B"]),
        st.integers(0, 3),
    )
    def test_real_segments_with_one_edit_decide_alike(
        self, payload: bytes, signature: bytes, edit: str, where: int
    ) -> None:
        parts = [b"eyJhbGciOiJFUzI1NiJ9", b64url_encode(payload), b64url_encode(signature)]
        token = b".".join(parts).decode()
        # The edit lands at the end of a segment (where padding and unused bits live) or the token's.
        cut = [len(parts[0]), len(parts[0]) + 1 + len(parts[1]), len(token), 0][where]
        edited = token[:cut] + edit + token[cut:]
        assert _decision(split_parts, edited) == _decision(slow_split, edited)
        assert _decision(split_parts, token) == (
            token.rsplit(".", 1)[0].encode(),
            parts[0],
            payload,
            signature,
        )
        assert split_compact(token, 300) == split_parts(token, 300)


def b64url_by_definition(segment: bytes) -> bytes | None:
    """RFC 7515 §2 base64url, read by its definition: only the 64 characters of its alphabet, no
    padding, and the one text that encodes the bytes (re-encoding gives it back: unused bits zero)."""
    if re.fullmatch(rb"[A-Za-z0-9_-]*", segment) is None or len(segment) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    return data if b64url_encode(data) == segment else None


def _b64url_decision(segment: bytes) -> bytes | None:
    try:
        return b64url_decode(segment)
    except (ValueError, binascii.Error):
        return None


_SEGMENT_CHARS = st.sampled_from(list(_B64URL + "=+/.!*~ \t\n\r\x00\x7f\x80\xff"))


class TestStrictBase64url:
    @settings(max_examples=3000, deadline=None)
    @given(st.lists(_SEGMENT_CHARS, max_size=24).map(lambda cs: "".join(cs).encode("latin-1")))
    def test_the_strict_decode_accepts_exactly_the_canonical_base64url_texts(self, segment: bytes) -> None:
        assert _b64url_decision(segment) == b64url_by_definition(segment)

    @settings(max_examples=1000, deadline=None)
    @given(
        st.binary(max_size=40),
        st.sampled_from(list(_B64URL + "=+/ ")),
        st.sampled_from(["last", "pad", "pad2"]),
    )
    def test_a_real_segment_edited_where_padding_and_unused_bits_live_decides_alike(
        self, data: bytes, char: str, how: str
    ) -> None:
        segment = b64url_encode(data)
        edited = {
            "last": segment[:-1] + char.encode(),
            "pad": segment + char.encode(),
            "pad2": segment + char.encode() * 2,
        }[how]
        assert _b64url_decision(segment) == data
        assert _b64url_decision(edited) == b64url_by_definition(edited)
        # The parse decides each segment alike: as a payload and as a signature.
        for token in (b"eyJhbGciOiJFUzI1NiJ9." + edited + b".AA", b"eyJhbGciOiJFUzI1NiJ9.e30." + edited):
            assert _decision(split_parts, token) == _decision(slow_split, token)


# --- r || s to DER -----------------------------------------------------------------------------------


def _halves(size: int) -> st.SearchStrategy[bytes]:
    # Leading zero octets and set high bits are where DER's minimal INTEGER differs from the raw bytes.
    edge = st.tuples(st.integers(0, size), st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]), st.binary())
    return st.one_of(
        st.binary(min_size=size, max_size=size),
        edge.map(lambda t: (bytes(t[0]) + bytes([t[1]]) + t[2] + bytes(size))[:size]),
    )


class TestDerSignature:
    @pytest.mark.parametrize("size", [32, 48, 66])
    @settings(max_examples=400, deadline=None)
    @given(data=st.data())
    def test_der_is_what_cryptography_encodes(self, size: int, data: st.DataObject) -> None:
        r, s = data.draw(_halves(size)), data.draw(_halves(size))
        expected = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
        assert der_signature(r + s, size) == expected

    @pytest.mark.parametrize("size", [32, 48, 66])
    def test_the_edges(self, size: int) -> None:
        for r in (bytes(size), b"\xff" * size, bytes(size - 1) + b"\x80", b"\x00\x80" + bytes(size - 2)):
            for s in (bytes(size), b"\x01" * size):
                expected = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
                assert der_signature(r + s, size) == expected


# --- the key a header remembers ----------------------------------------------------------------------


class TestRememberedKey:
    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=12))
    def test_a_header_never_checks_with_another_sources_key_under_the_same_kid(
        self, ec_key: Key, other_ec_key: Key, calls: list[tuple[bool, bool]]
    ) -> None:
        # Two sources (two identities) publishing different keys under one kid, one core, one header
        # segment: each call is decided by its own source's key, whatever the calls before remembered.
        mine = StaticJWKS({"keys": [{**ec_key.as_dict(private=False), "kid": "shared"}]})
        theirs = StaticJWKS({"keys": [{**other_ec_key.as_dict(private=False), "kid": "shared"}]})
        header = {"alg": "ES256", "typ": "at+jwt", "kid": "shared"}
        signed_by = {True: forge.sign(_with_kid(ec_key), header, base_claims()),
                     False: forge.sign(_with_kid(other_ec_key), header, base_claims())}  # fmt: skip
        core = JWSVerifier(algorithms=["ES256"], typ={"at+jwt"})
        for signer_is_mine, source_is_mine in calls:
            token, source = signed_by[signer_is_mine], mine if source_is_mine else theirs
            for check in (core.check_sync, core.verify_sync, core.verify_cached):
                if signer_is_mine == source_is_mine:
                    assert check(token, source)[1] == forge.b64decode(token.split(".")[1])
                else:
                    with pytest.raises(JWSError) as caught:
                        check(token, source)
                    assert caught.value.problem == "bad_signature"

    async def test_the_async_path_decides_by_the_callers_source_too(
        self, ec_key: Key, other_ec_key: Key
    ) -> None:
        mine = StaticJWKS({"keys": [{**ec_key.as_dict(private=False), "kid": "shared"}]})
        theirs = StaticJWKS({"keys": [{**other_ec_key.as_dict(private=False), "kid": "shared"}]})
        token = forge.sign(_with_kid(ec_key), {"alg": "ES256", "kid": "shared"}, base_claims())
        core = JWSVerifier(algorithms=["ES256"])
        for _ in range(2):
            assert (await core.check(token, mine))[2].kid == "shared"
            assert (await core.verify(token, mine)).payload == forge.b64decode(token.split(".")[1])
            for check in (core.check, core.verify):
                with pytest.raises(JWSError) as caught:
                    await check(token, theirs)
                assert caught.value.problem == "bad_signature"

    def test_the_purpose_verifier_takes_the_straight_path_and_refuses_what_it_must(self, ec_key: Key) -> None:
        verifier = PurposeTokenVerifier(
            issuer=ISSUER,
            audience=AUDIENCE,
            jwks={"keys": [ec_key.as_dict(private=False)]},
            algorithms=["ES256"],
        )
        header = {"alg": "ES256", "typ": "at+jwt", "kid": ec_key.kid}
        good = forge.sign(ec_key, header, base_claims())
        for _ in range(3):  # cold, then the remembered header and key
            assert verifier.verify(good, now=NOW).sub == base_claims()["sub"]
        twice = b'{"aud":"elsewhere",' + msgspec.json.encode(base_claims())[1:]
        with pytest.raises(VerificationError) as caught:
            verifier.verify(forge.sign(ec_key, header, twice), now=NOW)
        assert caught.value.reason == "malformed"
        forged = good[: good.rindex(".") + 1] + b64url_encode(bytes(64)).decode()
        with pytest.raises(VerificationError) as caught:
            verifier.verify(forged, now=NOW)
        assert caught.value.reason == "bad_signature"


def _with_kid(key: Key) -> Key:
    return ECKey.import_key({**key.as_dict(private=True), "kid": "shared"})
