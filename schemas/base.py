"""The one base Struct every wire, claims and config type inherits, and shared constrained scalars."""

from __future__ import annotations

from typing import Annotated, Final

import msgspec


class Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Strict, immutable, keyword-only: unknown keys are errors, nothing changes after decoding."""


NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")]
#: The longest a purpose token may live (seconds): the TTL cap, the verifier's default lifetime cap
#: and how long a retired signing key stays published all follow from it.
MAX_TOKEN_LIFETIME: Final = 900
#: The largest clock-skew allowance any token check accepts (seconds).
MAX_LEEWAY: Final = 120
#: The last second of 9999 (UTC): a NumericDate past it is an attack or a bug, never a real time.
MAX_NUMERIC_DATE: Final = 253_402_300_799
# Purpose-token lifetime: a few seconds to a few minutes, never more than 15.
TokenTTL = Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKEN_LIFETIME)]
Leeway = Annotated[int, msgspec.Meta(ge=0, le=MAX_LEEWAY)]
# RFC 7519 NumericDate, restricted to what we accept: a whole number of seconds in [0, year 9999].
NumericDate = Annotated[int, msgspec.Meta(ge=0, le=MAX_NUMERIC_DATE)]
Seconds = Annotated[int, msgspec.Meta(ge=1)]
