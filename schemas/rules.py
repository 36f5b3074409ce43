"""Purpose-policy building blocks: rule parameters, authorization_details field specs, delegation.

Each built-in rule is one Struct tagged by its `rule` name, so an unknown rule or a bad parameter is a
config decoding error that names the key. The `rules/` package gives each of them behaviour.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from schemas.base import Base, NonEmptyStr


class RuleBase(Base, tag_field="rule"):
    """Common parent of rule parameter Structs; `rule = "name"` selects the subclass."""


class ClaimRule(RuleBase, tag="claim"):
    """A claim of the subject token equals / contains / is in a set of / matches a value."""

    claim: NonEmptyStr
    equals: Any = None
    contains: Any = None
    in_: list[Any] | None = msgspec.field(default=None, name="in")
    matches: str | None = None


RuleConfig = ClaimRule


class DetailField(Base):
    """One field of an accepted RFC 9396 authorization_details type."""

    type: Literal["string", "number", "integer", "boolean"]
    required: bool = False


class Delegation(Base):
    """Whether an actor_token may (or must) accompany the request, and who may act."""

    mode: Literal["forbidden", "allowed", "required"] = "forbidden"
