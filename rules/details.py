"""RFC 9396 authorization_details: the accepted types of a purpose and validation of a request's.

The request parameter is attacker-controlled JSON that ends up inside a signed token, so it is bounded
before parsing (size), bounded by parsing (msgspec decodes into a fixed shape: a list of flat objects
whose values are scalars or lists of scalars, so depth is at most three), and then every entry must be
an accepted type with only declared fields, each of the declared type and within its bounds.

A Txn-Token request's `request_details` and `request_context` (draft-ietf-oauth-transaction-tokens-10
§11.1) are single JSON objects under the same bounds (`decode_object`, depth two) and the same field
checks (`validate_fields`); rules/txn.py maps them into `tctx` and `rctx`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from rules.denials import INVALID_AUTHORIZATION_DETAILS, Denial, DenialError
from schemas.equality import same
from schemas.rules import DetailField, Scalar

if TYPE_CHECKING:
    from rules.rule import Scope

MAX_DETAILS_BYTES = 4096
MAX_DETAILS_ENTRIES = 8
_TYPE_NAME = re.compile(r"^[\x21-\x7e]{1,128}$")

_Value = Scalar | list[Scalar]
_decoder = msgspec.json.Decoder(list[dict[str, _Value]])
_object_decoder = msgspec.json.Decoder(dict[str, _Value])


def _deny(code: str, description: str, error: str = INVALID_AUTHORIZATION_DETAILS) -> DenialError:
    return DenialError(Denial(code=code, description=description, error=error))


def _bounded(raw: str, name: str, error: str) -> None:
    if len(raw) > MAX_DETAILS_BYTES or len(raw.encode("utf-8", "surrogatepass")) > MAX_DETAILS_BYTES:
        raise _deny(f"{name}_too_large", f"{name} must be at most {MAX_DETAILS_BYTES} bytes", error)


def decode_object(raw: str, name: str, error: str) -> dict[str, Any]:
    """One flat JSON object (scalar or array-of-scalar values) of at most MAX_DETAILS_BYTES.

    `name` is the request parameter (in codes and messages); `error` the OAuth error of a refusal.
    """
    _bounded(raw, name, error)
    try:
        return _object_decoder.decode(raw)
    except msgspec.DecodeError:
        raise _deny(
            f"{name}_malformed", f"{name} must be a JSON object with scalar or array-of-string values", error
        ) from None


def validate_fields(
    fields: Mapping[str, FieldSpec],
    entry: Mapping[str, Any],
    where: str,
    *,
    error: str = INVALID_AUTHORIZATION_DETAILS,
    required: bool = True,
    skip: str | None = None,
    path: str | None = None,
) -> None:
    """Every member of `entry` (but `skip`) is a declared field and fits it; with `required`, every
    required field is present. `where` names the object in messages ("authorization_details[0] (payment)"),
    `path` the prefix of a field's own ("authorization_details[0]", default `where`).
    """
    path = where if path is None else path
    for name, value in entry.items():
        if name == skip:
            continue
        spec = fields.get(name)
        if spec is None:
            # Names are echoed only when declared; an undeclared name is attacker text.
            raise _deny("unknown_detail_field", f"{where} has a field that is not accepted", error)
        reason = spec.problem_with(value)
        if reason:
            raise _deny("invalid_detail_field", f"{path}.{name} {reason}", error)
    if required:
        for name, spec in fields.items():
            if spec.required and name not in entry:
                raise _deny("detail_field_missing", f"{where} needs {name}", error)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One compiled DetailField."""

    name: str
    type: str
    required: bool
    minimum: int | float | None
    maximum: int | float | None
    enum: tuple[Scalar, ...] | None
    pattern: re.Pattern[str] | None
    min_length: int | None
    max_length: int
    max_items: int

    @property
    def numeric(self) -> bool:
        return self.type in ("number", "integer")

    @property
    def textual(self) -> bool:
        return self.type in ("string", "array")

    def accepts_scalar(self, value: Any) -> bool:
        """Whether `value` has this field's (item) type: the check shared by validation and compile."""
        if self.type in ("string", "array"):
            return isinstance(value, str)
        if self.type == "boolean":
            return isinstance(value, bool)
        if self.type == "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    def problem_with(self, value: Any) -> str | None:
        """Why `value` does not fit this field, or None when it does."""
        if self.type == "array":
            if not isinstance(value, list):
                return "must be an array of strings"
            if len(value) > self.max_items:
                return f"must have at most {self.max_items} items"
            for item in value:
                reason = self._scalar_problem(item)
                if reason:
                    return f"item {reason}"
            return None
        return self._scalar_problem(value)

    def _scalar_problem(self, value: Any) -> str | None:
        if not self.accepts_scalar(value):
            return f"must be {'a string' if self.textual else 'a ' + self.type}"
        if self.enum is not None and not any(same(value, e) for e in self.enum):
            return "must be one of the accepted values"
        if isinstance(value, str):
            if len(value) > self.max_length:
                return f"must be at most {self.max_length} characters"
            if self.min_length is not None and len(value) < self.min_length:
                return f"must be at least {self.min_length} characters"
            if self.pattern is not None and not self.pattern.fullmatch(value):
                return "must match the accepted format"
        elif self.numeric:
            if self.minimum is not None and value < self.minimum:
                return f"must be at least {self.minimum}"
            if self.maximum is not None and value > self.maximum:
                return f"must be at most {self.maximum}"
        return None


class DetailsSchema:
    """The accepted authorization_details types of one purpose, compiled."""

    def __init__(self, types: Mapping[str, Mapping[str, FieldSpec]]) -> None:
        self.types = types

    @classmethod
    def compile(cls, config: Mapping[str, Mapping[str, DetailField]], scope: Scope) -> DetailsSchema:
        """Check every declared type and field; problems go to `scope`."""
        types: dict[str, dict[str, FieldSpec]] = {}
        base = scope.where
        for type_name, fields in config.items():
            scope.where = f"{base}.authorization_details.{type_name}"
            if not _TYPE_NAME.match(type_name):
                scope.problem("a type name must be 1 to 128 printable characters without spaces")
            if not fields:
                scope.problem("an accepted type must declare at least one field")
            compiled: dict[str, FieldSpec] = {}
            for name, spec in fields.items():
                scope.where = f"{base}.authorization_details.{type_name}.{name}"
                field = compile_field(name, spec, scope)
                if field is not None:
                    compiled[name] = field
            types[type_name] = compiled
        scope.where = base
        return cls(types)

    @property
    def type_names(self) -> tuple[str, ...]:
        return tuple(self.types)

    def fields_named(self, name: str, type_name: str | None = None) -> list[FieldSpec]:
        """The declarations of field `name` in `type_name`, or in every accepted type."""
        scopes = [self.types.get(type_name, {})] if type_name is not None else list(self.types.values())
        return [fields[name] for fields in scopes if name in fields]

    def validate(self, raw: str | None) -> list[dict[str, Any]]:
        """Parse and validate the request's authorization_details; [] when absent."""
        if raw is None:
            return []
        _bounded(raw, "authorization_details", INVALID_AUTHORIZATION_DETAILS)
        try:
            entries = _decoder.decode(raw)
        except msgspec.DecodeError:
            # msgspec's message names the offending path but may quote the input: keep it generic.
            raise _deny(
                "authorization_details_malformed",
                "authorization_details must be a JSON array of objects with scalar or array-of-string values",
            ) from None
        if len(entries) > MAX_DETAILS_ENTRIES:
            raise _deny(
                "authorization_details_too_large",
                f"authorization_details must have at most {MAX_DETAILS_ENTRIES} entries",
            )
        return [self._validate_entry(i, entry) for i, entry in enumerate(entries)]

    def _validate_entry(self, index: int, entry: dict[str, Any]) -> dict[str, Any]:
        type_name = entry.get("type")
        if not isinstance(type_name, str):
            raise _deny("detail_type_missing", f"authorization_details[{index}] must have a string type")
        fields = self.types.get(type_name)
        if fields is None:
            raise _deny(
                "unknown_detail_type",
                f"authorization_details[{index}]: type is not accepted for this purpose",
            )
        where = f"authorization_details[{index}]"
        validate_fields(fields, entry, f"{where} ({type_name})", skip="type", path=where)
        return {"type": type_name, **{k: v for k, v in entry.items() if k != "type"}}


def compile_field(name: str, spec: DetailField, scope: Scope) -> FieldSpec | None:
    """One declared field, checked (problems go to `scope`); None when it cannot be used."""
    ok = True
    if name == "type":
        scope.problem('"type" is the RFC 9396 type member and cannot be declared as a field')
        ok = False
    elif not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
        scope.problem("a field name must be an identifier (letters, digits, underscore) of at most 64")
        ok = False
    numeric = spec.type in ("number", "integer")
    textual = spec.type in ("string", "array")
    if not numeric and (spec.minimum is not None or spec.maximum is not None):
        scope.problem(f"minimum/maximum apply to number or integer fields, not {spec.type}")
        ok = False
    if spec.minimum is not None and spec.maximum is not None and spec.minimum > spec.maximum:
        scope.problem(f"minimum {spec.minimum} is greater than maximum {spec.maximum}")
        ok = False
    if not textual and (spec.pattern is not None or spec.min_length is not None):
        scope.problem(f"pattern/min_length apply to string or array fields, not {spec.type}")
        ok = False
    if spec.min_length is not None and spec.min_length > spec.max_length:
        scope.problem(f"min_length {spec.min_length} is greater than max_length {spec.max_length}")
        ok = False
    pattern = scope.regex(spec.pattern, "pattern") if spec.pattern is not None else None
    if spec.pattern is not None and pattern is None:
        ok = False
    field = FieldSpec(
        name=name,
        type=spec.type,
        required=spec.required,
        minimum=spec.minimum,
        maximum=spec.maximum,
        enum=tuple(spec.enum) if spec.enum is not None else None,
        pattern=pattern,
        min_length=spec.min_length,
        max_length=spec.max_length,
        max_items=spec.max_items,
    )
    for value in spec.enum or ():
        if not field.accepts_scalar(value):
            scope.problem(f"enum value {value!r} is not a {spec.type if not textual else 'string'}")
            ok = False
    return field if ok else None
