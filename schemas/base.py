"""The one base Struct every wire, claims and config type inherits, and shared constrained scalars."""

from __future__ import annotations

from typing import Annotated

import msgspec


class Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Strict, immutable, keyword-only: unknown keys are errors, nothing changes after decoding."""


NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")]
# Purpose-token lifetime: a few seconds to a few minutes, never more than 15.
TokenTTL = Annotated[int, msgspec.Meta(ge=1, le=900)]
Leeway = Annotated[int, msgspec.Meta(ge=0, le=120)]
Seconds = Annotated[int, msgspec.Meta(ge=1)]
