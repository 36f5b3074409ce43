"""Compact JWS, read strictly: the one parser the exchange (identity tokens) and the verifier (purpose
tokens) share.

Strict means one spelling per token: the base64url alphabet without padding (RFC 7515 §2), three
segments, ASCII, size-capped before anything else is looked at. Python's own base64 decoder skips
stray characters; `binascii.a2b_base64(strict_mode=True)` after an alphabet translate does not.
Header members that would let a token choose its own key (`jwk`, `jku`, `x5u`, `x5c`), demand
processing we do not do (`crit`) or change what is signed (`b64`, RFC 7797) are refused here, once.
The signature itself is checked by joserfc's algorithm objects, not here.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Final, Literal, NamedTuple

import msgspec

FORBIDDEN_HEADER: Final = ("crit", "jwk", "jku", "x5u", "x5c", "b64")
MAX_HEADER_BYTES: Final = 1024
# base64url -> standard alphabet; "+", "/" and "=" become "!", which strict decoding refuses.
_FROM_BASE64URL: Final = bytes.maketrans(b"-_+/=", b"+/!!!")
_PADDING: Final = (b"", b"", b"==", b"=")
_HEADER_DECODER: Final = msgspec.json.Decoder(dict[str, Any])

Problem = Literal["oversized", "malformed", "forbidden_header"]


class CompactError(ValueError):
    """The token is not a strict compact JWS; `problem` says how, the message says where."""

    def __init__(self, problem: Problem, detail: str) -> None:
        super().__init__(detail)
        self.problem: Problem = problem


class Compact(NamedTuple):
    signing_input: bytes
    header_segment: bytes
    payload: bytes
    signature: bytes


def b64url_decode(segment: bytes) -> bytes:
    """Strict base64url without padding; raises ValueError (len % 4 == 1 is never valid)."""
    return binascii.a2b_base64(
        segment.translate(_FROM_BASE64URL) + _PADDING[len(segment) % 4], strict_mode=True
    )


def b64url_encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def split_compact(token: str | bytes, max_bytes: int) -> Compact:
    """Size cap, ASCII, three strict base64url segments; the header segment is left encoded."""
    if len(token) > max_bytes:
        raise CompactError("oversized", "token exceeds the size cap")
    if isinstance(token, str):
        try:
            value = token.encode("ascii")
        except UnicodeEncodeError:
            raise CompactError("malformed", "token is not ASCII") from None
    elif isinstance(token, bytes):
        value = token
    else:
        raise TypeError(f"token must be str or bytes, not {type(token).__name__}")
    if value[:1] == b"{":
        raise CompactError("malformed", "JSON-serialised JWS; only compact serialisation is accepted")
    parts = value.split(b".")
    if len(parts) != 3:
        raise CompactError("malformed", "a compact JWS has three segments")
    header_segment, payload_segment, signature_segment = parts
    try:
        payload = b64url_decode(payload_segment)
        signature = b64url_decode(signature_segment)
    except (ValueError, binascii.Error):
        raise CompactError("malformed", "payload or signature is not base64url") from None
    signing_input = value[: len(header_segment) + 1 + len(payload_segment)]
    return Compact(signing_input, header_segment, payload, signature)


def decode_header(segment: bytes) -> dict[str, Any]:
    """The protected header as a dict, with no forbidden member and a string `alg`."""
    if len(segment) > MAX_HEADER_BYTES:
        raise CompactError("malformed", "JWS header exceeds the size cap")
    try:
        header = _HEADER_DECODER.decode(b64url_decode(segment))
    except (ValueError, binascii.Error, RecursionError):
        raise CompactError("malformed", "JWS header is not a base64url JSON object") from None
    for member in FORBIDDEN_HEADER:
        if member in header:
            raise CompactError("forbidden_header", f"forbidden JWS header member {member!r}")
    if not isinstance(header.get("alg"), str):
        raise CompactError("malformed", "JWS header has no alg")
    return header


class HeaderMemo:
    """Header segment -> decoded header (shared: callers only read it).

    Tokens from one key share their header byte for byte, so the steady state skips the header parse;
    the bound only stops a stream of junk headers from growing the memo.
    """

    __slots__ = ("_headers", "_size")

    def __init__(self, size: int = 64) -> None:
        self._headers: dict[bytes, dict[str, Any]] = {}
        self._size = size

    def get(self, segment: bytes) -> Mapping[str, Any]:
        header = self._headers.get(segment)
        if header is None:
            header = decode_header(segment)
            if len(self._headers) >= self._size:
                self._headers.clear()
            self._headers[segment] = header
        return header
