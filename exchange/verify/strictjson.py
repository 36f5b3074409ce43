"""JSON read without ambiguity: the claims and header decoding every token kind shares.

RFC 7515 §4 and RFC 7519 §4 let a parser keep the last of two members with one name, or refuse them;
two parsers that choose differently see two different tokens behind one signature. msgspec keeps the
last silently, so every object we decode is checked for duplicate names, at every nesting level.

The check is exact and nearly free, in three tiers, each only for what the one before could not prove:

1. Round trip. Re-encode what msgspec decoded; if that gives back the input byte for byte, the input
   has no duplicate member. Proof: the input then IS the encoder's output for a decoded value, and the
   encoder writes each object from a dict (unique keys) or a Struct (unique wire names, which msgspec
   enforces when the class is made), one member per key; it spells every name in one canonical way,
   so distinct names are distinct texts that decode back to distinct names, for any parser. (Said the
   other way: a text with a duplicate decodes to fewer members than it spells, and the re-encoding,
   one member per surviving key, is shorter, so the bytes differ.) Tokens whose issuer encodes with
   msgspec, as the exchange does, take this tier: one encode and one comparison.
2. Colon count. When the text has no backslash, every string in it decodes to the same bytes it is
   spelled with, so the colons in the text are one per member plus those inside strings. Re-encoding
   gives one colon per surviving member plus those of surviving strings. A duplicate drops at least
   one member (and the strings under it), so the counts differ: equal counts prove there was none.
3. Otherwise (any escape, unequal counts) the exact, slower check with the standard library's
   `object_pairs_hook`, which only has to look at the odd token.
"""

from __future__ import annotations

import json
from typing import Any, Final, TypeGuard

import msgspec

from schemas.base import MAX_NUMERIC_DATE

_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
_encode: Final = msgspec.json.Encoder().encode


class AmbiguousJSON(ValueError):
    """The text is not one unambiguous JSON object; `duplicate` says a member name was repeated."""

    def __init__(self, detail: str, *, duplicate: bool = False) -> None:
        super().__init__(detail)
        self.duplicate = duplicate


class _Duplicate(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Duplicate
    return obj


_EXACT: Final = json.JSONDecoder(object_pairs_hook=_pairs)


def refuse_duplicates(raw: bytes, decoded: Any) -> None:
    """Raise AmbiguousJSON if `raw`, which msgspec decoded to `decoded`, repeats a member name.

    `decoded` may be a dict or a msgspec Struct (then re-encoded by its own field names); it must hold
    only values from `raw` (no computed defaults), which is what decoding gives.
    """
    again = _encode(decoded)
    if again == raw or (b"\\" not in raw and raw.count(b":") == again.count(b":")):
        return
    try:
        _EXACT.decode(raw.decode("utf-8"))
    except _Duplicate:
        raise AmbiguousJSON("a member name is repeated", duplicate=True) from None
    except (ValueError, RecursionError):
        # msgspec accepted what the standard library refuses: refuse the differential too.
        raise AmbiguousJSON("the JSON text is not read the same by every parser") from None


def decode_object(raw: bytes) -> dict[str, Any]:
    """A JSON object with unique member names at every level; AmbiguousJSON otherwise.

    Non-UTF-8 text, NaN/Infinity, numbers out of range and deep nesting are refused by msgspec.
    """
    try:
        obj = _OBJECT.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise AmbiguousJSON(f"not a JSON object: {exc}") from None
    refuse_duplicates(raw, obj)
    return obj


def is_numeric_date(value: Any) -> TypeGuard[int]:
    """RFC 7519 NumericDate as we accept it: a JSON integer (not a float, not a bool) in [0, year 9999]."""
    return type(value) is int and 0 <= value <= MAX_NUMERIC_DATE
