"""Rules that compare values: a subject claim (`claim`), a detail field (`detail`), or one to the
other (`subject_binding`).

Comparison is strict (see `schemas.equality.same`): a token's `true` never satisfies `equals = 1`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from rules.context import MISSING, Allow, Deny, RuleContext, lookup
from rules.details import FieldSpec
from rules.rule import Rule, Scope, Stage
from schemas.equality import same
from schemas.rules import ClaimRule, DetailRule, Scalar, SubjectBindingRule


def _show(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


@dataclass(frozen=True, slots=True)
class ClaimCheck:
    claim: str
    op: str
    expected: Any
    pattern: re.Pattern[str] | None
    code: str
    stage: Stage = Stage.PURE

    @property
    def label(self) -> str:
        return f"claim[{self.claim}]"

    def describe(self) -> str:
        verb = {"equals": "equal", "contains": "contain", "in": "be one of", "matches": "match"}[self.op]
        return f"claim {_show(self.claim)} must {verb} {_show(self.expected)}"

    async def check(self, ctx: RuleContext) -> Allow | Deny:
        value = lookup(ctx.subject, self.claim)
        if value is MISSING:
            return Deny(self.code, f"the subject token has no {_show(self.claim)} claim; {self.describe()}")
        return Allow() if self._holds(value) else Deny(self.code, self.describe())

    def _holds(self, value: Any) -> bool:
        if self.op == "equals":
            return same(value, self.expected)
        if self.op == "contains":
            # The frozen subject holds its arrays as tuples: that exact type first, the ABC check otherwise.
            if type(value) is tuple or (isinstance(value, Sequence) and not isinstance(value, str)):
                return any(same(item, self.expected) for item in value)
            # A space-separated string claim (OAuth `scope`) is a set of words, never a substring
            # match: "admin" must not be found in "nonadmin".
            return (
                isinstance(value, str) and isinstance(self.expected, str) and self.expected in value.split()
            )
        if self.op == "in":
            return _is_scalar(value) and any(same(value, option) for option in self.expected)
        assert self.pattern is not None  # compile sets it for "matches"
        return isinstance(value, str) and self.pattern.fullmatch(value) is not None


def compile_claim(cfg: ClaimRule, scope: Scope) -> Rule | None:
    ops = {"equals": cfg.equals, "contains": cfg.contains, "in": cfg.in_, "matches": cfg.matches}
    given = [(op, value) for op, value in ops.items() if value is not None]
    if len(given) != 1:
        scope.problem("a claim rule needs exactly one of equals, contains, in, matches")
        return None
    op, expected = given[0]
    pattern = None
    if op == "matches":
        pattern = scope.regex(str(expected), "matches")
        if pattern is None:
            return None
    if op == "in" and not expected:
        scope.problem('"in" needs at least one value')
        return None
    return ClaimCheck(cfg.claim, op, expected, pattern, cfg.code or "claim_mismatch")


def _entries(ctx: RuleContext, type_name: str | None) -> Iterator[Mapping[str, Any]]:
    for entry in ctx.details:
        if type_name is None or entry.get("type") == type_name:
            yield entry


def _code_stem(field: str) -> str:
    """ "amount" -> "amount", "creditorAccount" -> "creditor_account": stable, lower snake case."""
    stem = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", field).lower().strip("_")
    stem = re.sub(r"_+", "_", stem)[:40]
    return stem if stem[:1].isalpha() else f"detail_{stem}".rstrip("_")


@dataclass(frozen=True, slots=True)
class DetailCheck:
    field: str
    type: str | None
    minimum: int | float | None
    maximum: int | float | None
    options: tuple[Scalar, ...] | None
    pattern: re.Pattern[str] | None
    code: str | None
    stage: Stage = Stage.PURE

    @property
    def label(self) -> str:
        return f"detail[{self.field}]"

    def describe(self) -> str:
        parts = []
        if self.minimum is not None:
            parts.append(f"at least {self.minimum}")
        if self.maximum is not None:
            parts.append(f"at most {self.maximum}")
        if self.options is not None:
            parts.append(f"one of {_show(list(self.options))}")
        if self.pattern is not None:
            parts.append(f"matching {_show(self.pattern.pattern)}")
        where = f" of {self.type}" if self.type else ""
        return f"authorization_details{where} field {self.field} must be " + " and ".join(parts)

    def _deny(self, suffix: str, description: str) -> Deny:
        return Deny(self.code or f"{_code_stem(self.field)}_{suffix}", description)

    async def check(self, ctx: RuleContext) -> Allow | Deny:
        seen = False
        for entry in _entries(ctx, self.type):
            if self.field not in entry:
                continue
            seen = True
            value = entry[self.field]
            # Arrays (RFC 9396 `actions`...) pass when every item does.
            for item in value if isinstance(value, tuple) else (value,):
                denial = self._check_value(item)
                if denial is not None:
                    return denial
        if not seen:
            return self._deny("missing", f"authorization_details must carry {self.field}")
        return Allow()

    def _check_value(self, value: Any) -> Deny | None:
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if self.minimum is not None and (not numeric or value < self.minimum):
            return self._deny("too_low", f"{self.field} must be at least {self.minimum}")
        if self.maximum is not None and (not numeric or value > self.maximum):
            return self._deny("too_high", f"{self.field} must be at most {self.maximum}")
        if self.options is not None and not any(same(value, option) for option in self.options):
            return self._deny("not_allowed", f"{self.field} must be one of {_show(list(self.options))}")
        if self.pattern is not None and not (isinstance(value, str) and self.pattern.fullmatch(value)):
            return self._deny("invalid_format", f"{self.field} must match {_show(self.pattern.pattern)}")
        return None


def _declared(field: str, type_name: str | None, scope: Scope) -> list[FieldSpec]:
    """The accepted-type declarations a detail-reading rule relies on; reports when there are none."""
    if type_name is not None and type_name not in scope.details.types:
        accepted = ", ".join(scope.details.type_names) or "none"
        scope.problem(
            f"type {type_name!r} is not an accepted authorization_details type (accepted: {accepted})"
        )
        return []
    specs = scope.details.fields_named(field, type_name)
    if not specs:
        declared = "; ".join(
            f"{name}: {', '.join(fields) or '-'}" for name, fields in scope.details.types.items()
        )
        scope.problem(
            f"field {field!r} is not declared in any accepted authorization_details type"
            f" ({declared or 'the purpose declares no authorization_details types'})"
        )
    return specs


def compile_detail(cfg: DetailRule, scope: Scope) -> Rule | None:
    specs = _declared(cfg.field, cfg.type, scope)
    if not specs:
        return None
    ok = True
    if cfg.max is None and cfg.min is None and cfg.in_ is None and cfg.matches is None:
        scope.problem("a detail rule needs at least one of max, min, in, matches")
        ok = False
    if (cfg.max is not None or cfg.min is not None) and not all(s.numeric for s in specs):
        scope.problem(f"max/min need a number or integer field; {cfg.field!r} is {specs[0].type}")
        ok = False
    if cfg.max is not None and cfg.min is not None and cfg.min > cfg.max:
        scope.problem(f"min {cfg.min} is greater than max {cfg.max}")
        ok = False
    if cfg.matches is not None and not all(s.textual for s in specs):
        scope.problem(f"matches needs a string field; {cfg.field!r} is {specs[0].type}")
        ok = False
    for option in cfg.in_ or ():
        if not all(s.accepts_scalar(option) for s in specs):
            scope.problem(f"in value {option!r} can never equal {cfg.field!r} ({specs[0].type})")
            ok = False
    if cfg.in_ is not None and not cfg.in_:
        scope.problem('"in" needs at least one value')
        ok = False
    pattern = scope.regex(cfg.matches, "matches") if cfg.matches is not None else None
    if cfg.matches is not None and pattern is None:
        ok = False
    if not ok:
        return None
    options = tuple(cfg.in_) if cfg.in_ is not None else None
    return DetailCheck(cfg.field, cfg.type, cfg.min, cfg.max, options, pattern, cfg.code)


@dataclass(frozen=True, slots=True)
class SubjectBindingCheck:
    field: str
    claim: str
    type: str | None
    code: str
    stage: Stage = Stage.PURE

    @property
    def label(self) -> str:
        return f"subject_binding[{self.field}]"

    def describe(self) -> str:
        return f"authorization_details field {self.field} must equal the subject's {_show(self.claim)} claim"

    async def check(self, ctx: RuleContext) -> Allow | Deny:
        expected = lookup(ctx.subject, self.claim)
        if expected is MISSING or not _is_scalar(expected):
            return Deny(self.code, f"the subject token has no usable {_show(self.claim)} claim")
        values = [entry[self.field] for entry in _entries(ctx, self.type) if self.field in entry]
        if not values:
            return Deny(self.code, f"authorization_details must carry {self.field}")
        if all(same(value, expected) for value in values):
            return Allow()
        return Deny(self.code, self.describe())


def compile_subject_binding(cfg: SubjectBindingRule, scope: Scope) -> Rule | None:
    specs = _declared(cfg.field, cfg.type, scope)
    if not specs:
        return None
    if any(s.type == "array" for s in specs):
        scope.problem(f"field {cfg.field!r} is an array; subject_binding compares one value")
        return None
    return SubjectBindingCheck(cfg.field, cfg.claim, cfg.type, cfg.code or "subject_binding_mismatch")
