"""Purpose-policy building blocks: rule parameters, authorization_details field specs, delegation.

Each built-in rule is one Struct tagged by its `rule` name, so an unknown rule or a parameter of the
wrong type is a config decoding error that names the key. Checks that need more than one field (exactly
one operator, a regex that compiles, a field that exists in an accepted type) happen when the `rules/`
package compiles the policies, so that every problem is reported at once. See docs/RULES.md.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.base import Base, NonEmptyStr, Seconds

# A denial code is part of the public contract: short, lower snake case, safe to branch on.
DenialCode = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
# A dotted path into the subject token's claims ("realm_access.roles") or a detail field name.
ClaimPath = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
FieldName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Scalar = str | int | float | bool
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ALL_WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_MFA_METHODS: tuple[str, ...] = ("mfa", "otp", "hwk", "swk", "fpt", "face")


class RuleBase(Base, tag_field="rule", kw_only=True, frozen=True):
    """Common parent of rule parameter Structs; `rule = "name"` selects the subclass.

    `code` overrides the rule's default denial code, for clients that branch on a finer reason.
    """

    code: DenialCode | None = None


class ClaimRule(RuleBase, tag="claim", kw_only=True, frozen=True):
    """A claim of the subject token equals / contains / is in a set of / matches a value."""

    claim: ClaimPath
    equals: Scalar | None = None
    contains: Scalar | None = None
    in_: list[Scalar] | None = msgspec.field(default=None, name="in")
    matches: str | None = None


class MfaRule(RuleBase, tag="mfa", kw_only=True, frozen=True):
    """The subject's `amr` names at least one of `methods`."""

    methods: Annotated[list[NonEmptyStr], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: list(DEFAULT_MFA_METHODS)
    )
    # RFC 9470 hint sent back with the step-up answer (the IdP's acr for a multi-factor login).
    acr_values: NonEmptyStr | None = None


class AcrRule(RuleBase, tag="acr", kw_only=True, frozen=True):
    """The subject's `acr` is `at_least` or later in `order` (weakest first)."""

    at_least: NonEmptyStr
    order: Annotated[list[NonEmptyStr], msgspec.Meta(min_length=1)]


class MaxAuthAgeRule(RuleBase, tag="max_auth_age", kw_only=True, frozen=True):
    """The subject authenticated (`auth_time`) at most `seconds` ago."""

    seconds: Seconds


class DetailRule(RuleBase, tag="detail", kw_only=True, frozen=True):
    """A field of the validated authorization_details is within bounds / in a set / matches."""

    field: FieldName
    # Restrict the rule to one accepted authorization_details type; default: every type with the field.
    type: NonEmptyStr | None = None
    max: int | float | None = None
    min: int | float | None = None
    in_: list[Scalar] | None = msgspec.field(default=None, name="in")
    matches: str | None = None


class SubjectBindingRule(RuleBase, tag="subject_binding", kw_only=True, frozen=True):
    """A field of the authorization_details equals a claim of the subject (owner == sub)."""

    field: FieldName
    claim: ClaimPath
    type: NonEmptyStr | None = None


class TimeWindowRule(RuleBase, tag="time_window", kw_only=True, frozen=True):
    """Tokens are granted only on `days`, between `hours` ("HH:MM-HH:MM"), in `timezone`."""

    days: Annotated[list[Weekday], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: list(ALL_WEEKDAYS)
    )
    hours: Annotated[str, msgspec.Meta(pattern=r"^\d{2}:\d{2}-\d{2}:\d{2}$")] = "00:00-24:00"
    timezone: NonEmptyStr = "UTC"


class RateLimitRule(RuleBase, tag="rate_limit", kw_only=True, frozen=True):
    """At most `max` tokens per `key` (subject or client) for this purpose per `per` seconds."""

    max: Annotated[int, msgspec.Meta(ge=1)]
    per: Seconds
    key: Literal["sub", "client"] = "sub"


class PythonRule(RuleBase, tag="python", kw_only=True, frozen=True):
    """An async function `package.module:function` taking a RuleContext, returning Allow or Deny."""

    function: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    # A slow rule fails closed instead of holding the request (and a store connection) hostage.
    timeout: Annotated[float, msgspec.Meta(gt=0, le=30)] = 2.0


RuleConfig = (
    ClaimRule
    | MfaRule
    | AcrRule
    | MaxAuthAgeRule
    | DetailRule
    | SubjectBindingRule
    | TimeWindowRule
    | RateLimitRule
    | PythonRule
)


class DetailField(Base, frozen=True):
    """One field of an accepted RFC 9396 authorization_details type.

    `array` is a list of strings (RFC 9396's `actions`, `locations`...); `enum`, `pattern` and the
    length bounds then apply to each item.
    """

    type: Literal["string", "number", "integer", "boolean", "array"]
    required: bool = False
    minimum: int | float | None = None
    maximum: int | float | None = None
    enum: Annotated[list[Scalar], msgspec.Meta(min_length=1)] | None = None
    pattern: str | None = None
    min_length: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max_length: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 256
    max_items: Annotated[int, msgspec.Meta(ge=1, le=64)] = 16
    description: str | None = None


class Actor(Base, frozen=True):
    """Who may act: an actor token from `issuer` whose `sub` (or `client_id` claim) matches."""

    issuer: NonEmptyStr
    sub: NonEmptyStr | None = None
    client_id: NonEmptyStr | None = None


class Delegation(Base, frozen=True):
    """Whether an actor_token may (or must) accompany the request, and who may act."""

    mode: Literal["forbidden", "allowed", "required"] = "forbidden"
    actors: list[Actor] = msgspec.field(default_factory=list)
    # Nesting of the RFC 8693 `act` claim in the purpose token (the new actor counts as one).
    max_depth: Annotated[int, msgspec.Meta(ge=1, le=16)] = 4


__all__ = [
    "ALL_WEEKDAYS",
    "DEFAULT_MFA_METHODS",
    "AcrRule",
    "Actor",
    "ClaimRule",
    "Delegation",
    "DenialCode",
    "DetailField",
    "DetailRule",
    "MaxAuthAgeRule",
    "MfaRule",
    "PythonRule",
    "RateLimitRule",
    "RuleBase",
    "RuleConfig",
    "Scalar",
    "SubjectBindingRule",
    "TimeWindowRule",
    "Weekday",
]
