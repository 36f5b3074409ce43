"""Compact JWS, read strictly: the one parser the exchange (identity tokens) and the verifier (purpose
tokens) share.

Strict means one spelling per token: the base64url alphabet without padding (RFC 7515 §2), three
segments, ASCII, size-capped before anything else is looked at. Python's own base64 decoder skips
stray characters; `binascii.a2b_base64(strict_mode=True)` after an alphabet translate does not.
Header members that would let a token choose its own key (`jwk`, `jku`, `x5u`, `x5c`), demand
processing we do not do (`crit`), change what is signed (`b64`, RFC 7797) or announce a nested or
compressed content (`cty`, `zip`: we never unwrap one token from another) are refused here, once, and
so is a header that repeats a member name. The header policy (algorithms, `typ`, `kid`) and the
signature are `exchange.verify.jws`'s.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final, Literal, NamedTuple

from exchange.verify.strictjson import AmbiguousJSON, decode_object

FORBIDDEN_HEADER: Final = ("crit", "jwk", "jku", "x5u", "x5c", "b64", "cty", "zip")
MAX_HEADER_BYTES: Final = 1024
# base64url -> standard alphabet; "+", "/" and "=" become "!", which strict decoding refuses.
_FROM_BASE64URL: Final = bytes.maketrans(b"-_+/=", b"+/!!!")
_PADDING: Final = (b"", b"", b"==", b"=")
_a2b: Final = binascii.a2b_base64
_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# The characters a segment of length 4k+2 (4 unused bits) or 4k+3 (2 unused bits) may end with.
_CANONICAL_LAST: Final = {
    1: frozenset(),
    2: frozenset(_ALPHABET[::16]),
    3: frozenset(_ALPHABET[::4]),
}

#: Why a JWS was refused, most specific first; callers map these to their own reason codes.
Problem = Literal[
    "oversized",
    "malformed",
    "forbidden_header",
    "duplicate_member",
    "algorithm_not_allowed",
    "wrong_type",
    "missing_kid",
    "unknown_kid",
    # The kid is unknown and the cooldown kept the set from being fetched again to look for it.
    "unknown_kid_refetch_suppressed",
    # The issuer's keys could not be fetched (and no usable set is at hand): not the token's fault.
    "jwks_unavailable",
    "algorithm_key_mismatch",
    "bad_signature",
]


class JWSError(ValueError):
    """A JWS was refused; `problem` says how (a stable code), the message says where (for logs)."""

    def __init__(self, problem: Problem, detail: str) -> None:
        super().__init__(detail)
        self.problem: Problem = problem


#: The former name, kept for importers.
CompactError = JWSError


class Compact(NamedTuple):
    signing_input: bytes
    header_segment: bytes
    payload: bytes
    signature: bytes


_new_tuple: Final = tuple.__new__


def b64url_decode(segment: bytes) -> bytes:
    """Strict, canonical base64url without padding; raises ValueError (len % 4 == 1 is never valid).

    Canonical: the unused low bits of the last character must be zero. Otherwise "QQ" and "QR" both
    decode to b"A", and one token has several spellings (a bit flipped in a signature's last
    character would still verify).
    """
    rest = len(segment) % 4
    if rest and segment[-1] not in _CANONICAL_LAST[rest]:
        raise ValueError("non-canonical base64url: unused bits are set")
    return binascii.a2b_base64(segment.translate(_FROM_BASE64URL) + _PADDING[rest], strict_mode=True)


def b64url_encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def split_compact(token: str | bytes, max_bytes: int) -> Compact:
    """Size cap, ASCII, three strict base64url segments; the header segment is left encoded.

    A JWE (five segments) or a JSON serialisation is refused as malformed.
    """
    # tuple.__new__ is what Compact(...) ends in, without the generated __new__ in between.
    return _new_tuple(Compact, split_parts(token, max_bytes))


def split_parts(token: str | bytes, max_bytes: int) -> tuple[bytes, bytes, bytes, bytes]:
    """`split_compact` as a plain tuple (signing input, header segment, payload, signature): the one
    strict parse, for the core's hot path, which unpacks it at once."""
    if len(token) > max_bytes:
        raise JWSError("oversized", "token exceeds the size cap")
    if isinstance(token, str):
        try:
            value = token.encode("ascii")
        except UnicodeEncodeError:
            raise JWSError("malformed", "token is not ASCII") from None
    elif isinstance(token, bytes):
        value = token
    else:
        raise TypeError(f"token must be str or bytes, not {type(token).__name__}")
    if value[:1] == b"{":
        raise JWSError("malformed", "JSON-serialised JWS; only compact serialisation is accepted")
    # The last dot, then the first dot before it: two calls that hand back the signing input and the
    # three segments (no list, no extra slices); a dot left in the middle segment makes it more than
    # three segments, and a missing one fewer, exactly as split(b".") would say.
    signing_input, _, signature_segment = value.rpartition(b".")
    header_segment, dot, payload_segment = signing_input.partition(b".")
    if not dot or b"." in payload_segment:
        raise JWSError("malformed", "a compact JWS has three segments")
    # b64url_decode twice, inlined: this is every token's path.
    rest_p, rest_s = len(payload_segment) % 4, len(signature_segment) % 4
    if (rest_p and payload_segment[-1] not in _CANONICAL_LAST[rest_p]) or (
        rest_s and signature_segment[-1] not in _CANONICAL_LAST[rest_s]
    ):
        raise JWSError("malformed", "payload or signature is not canonical base64url")
    try:
        payload = _a2b(payload_segment.translate(_FROM_BASE64URL) + _PADDING[rest_p], strict_mode=True)
        signature = _a2b(signature_segment.translate(_FROM_BASE64URL) + _PADDING[rest_s], strict_mode=True)
    except binascii.Error:
        raise JWSError("malformed", "payload or signature is not base64url") from None
    return signing_input, header_segment, payload, signature


def decode_header(segment: bytes) -> dict[str, Any]:
    """The protected header: one unambiguous JSON object, no forbidden member, a string `alg`."""
    if len(segment) > MAX_HEADER_BYTES:
        raise JWSError("malformed", "JWS header exceeds the size cap")
    try:
        raw = b64url_decode(segment)
    except (ValueError, binascii.Error):
        raise JWSError("malformed", "JWS header is not base64url") from None
    try:
        header = decode_object(raw)
    except AmbiguousJSON as exc:
        problem: Problem = "duplicate_member" if exc.duplicate else "malformed"
        raise JWSError(problem, f"JWS header: {exc}") from None
    for member in FORBIDDEN_HEADER:
        if member in header:
            raise JWSError("forbidden_header", f"forbidden JWS header member {member!r}")
    if not isinstance(header.get("alg"), str):
        raise JWSError("malformed", "JWS header has no alg")
    return header
