"""A purpose's Txn-Token mapping: the Transaction Token Service, not the requester, decides what a
Txn-Token asserts (draft-ietf-oauth-transaction-tokens-10 §11.3: "The TTS is authoritative").

- `tctx` (§9.2.3), the values that stay immutable along the call chain: the request's
  `request_details`, validated as one of the purpose's RFC 9396 authorization_details types (the same
  field specs, rules/details.py), so the purpose's `detail` and `subject_binding` rules apply to it
  exactly as to authorization_details. Undeclared members are refused: a constraint the requester
  believes is asserted must not be dropped silently.
- `rctx` (§9.2.2), the environment of the request: the declared members of `request_context`, each
  checked against its field spec; undeclared members are not asserted (the TTS selects what it vouches
  for from what a gateway offers).
- scope (§13.6, §13.14): the subject token's own scope must cover the purpose; a subject whose scope
  cannot be determined is refused unless the purpose says its own rules are the trusted source.
- replacement (§13.15): which purposes' Txn-Tokens a Txn-Token of this purpose may replace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from rules.context import MISSING, lookup
from rules.denials import INVALID_REQUEST, Denial, DenialError
from rules.details import FieldSpec, compile_field, decode_object, validate_fields
from rules.rule import Scope
from schemas.config import TxnPurpose

INVALID_SCOPE: Final = "invalid_scope"


@dataclass(frozen=True, slots=True)
class TxnMapping:
    """One purpose's compiled `[purposes.NAME.txn_token]`."""

    purpose: str
    details_type: str | None
    details_fields: Mapping[str, FieldSpec]
    context_fields: Mapping[str, FieldSpec]
    subject_scopes: tuple[str, ...]
    scope_claim: str
    unscoped: str
    replaces: frozenset[str]
    ttl: int | None

    @classmethod
    def compile(cls, name: str, config: TxnPurpose, scope: Scope) -> TxnMapping:
        """Check the mapping against the purpose's details types and the other purposes (problems go
        to `scope`)."""
        base = scope.where
        scope.where = f"{base}.txn_token"
        if scope.settings.txn_tokens is None:
            scope.problem("a purpose that issues Txn-Tokens needs a [txn_tokens] section")
        fields: Mapping[str, FieldSpec] = {}
        if config.request_details is not None:
            declared = scope.details.types.get(config.request_details)
            if declared is None:
                accepted = ", ".join(scope.details.type_names) or "none"
                scope.problem(
                    f"request_details names {config.request_details!r}, which is not one of the "
                    f"purpose's authorization_details types (accepted: {accepted})"
                )
            else:
                fields = declared
        context: dict[str, FieldSpec] = {}
        for member, spec in config.request_context.items():
            scope.where = f"{base}.txn_token.request_context.{member}"
            compiled = compile_field(member, spec, scope)
            if compiled is not None:
                context[member] = compiled
        scope.where = f"{base}.txn_token"
        for value in config.subject_scopes or ():
            if value != value.strip() or any(c.isspace() for c in value):
                scope.problem(f"subject_scopes: {value!r} is not one scope value (no spaces)")
        for other in config.replaces:
            target = scope.settings.purposes.get(other)
            if target is None:
                scope.problem(f"replaces: {other!r} is not a configured purpose")
            elif target.txn_token is None:
                scope.problem(f"replaces: purpose {other!r} does not issue Txn-Tokens")
        scope.where = base
        return cls(
            purpose=name,
            details_type=config.request_details,
            details_fields=fields,
            context_fields=context,
            subject_scopes=tuple(config.subject_scopes or (name,)),
            scope_claim=config.scope_claim,
            unscoped=config.unscoped_subjects,
            replaces=frozenset({name, *config.replaces}),
            ttl=config.ttl,
        )

    def transaction_context(self, raw: str | None, *, replacing: bool = False) -> dict[str, Any]:
        """`tctx` from `request_details` (draft §11.3). A replacement may only add members, so its
        request_details need not repeat the required ones. Raises DenialError."""
        if raw is None:
            if self.details_type is not None and not replacing:
                raise _refuse("request_details_missing", "request_details is required for this purpose")
            return {}
        if self.details_type is None:
            raise _refuse("request_details_not_accepted", "this purpose takes no request_details")
        values = decode_object(raw, "request_details", INVALID_REQUEST)
        validate_fields(
            self.details_fields,
            values,
            f"request_details ({self.details_type})",
            error=INVALID_REQUEST,
            required=not replacing,
            path="request_details",
        )
        return values

    def request_context(self, raw: str | None) -> dict[str, Any]:
        """`rctx`: the declared members of `request_context`, each checked (draft §11.3)."""
        offered = decode_object(raw, "request_context", INVALID_REQUEST) if raw is not None else {}
        asserted = {name: value for name, value in offered.items() if name in self.context_fields}
        validate_fields(self.context_fields, asserted, "request_context", error=INVALID_REQUEST)
        return asserted

    def details(self, tctx: Mapping[str, Any]) -> list[dict[str, Any]]:
        """What the purpose's rules see as `ctx.details`: tctx as an entry of its details type."""
        if self.details_type is None or not tctx:
            return []
        return [{"type": self.details_type, **tctx}]

    def scope_denial(self, subject: Mapping[str, Any]) -> Denial | None:
        """Draft §13.6: the subject token's scope must cover this purpose; §13.14: a scope that cannot
        be determined is never treated as unconstrained (unless the purpose derives it)."""
        held = _scope_values(lookup(subject, self.scope_claim))
        if held is None:
            if self.unscoped == "purpose":
                return None
            return Denial(
                code="subject_scope_unknown",
                description="the subject token's scope cannot be determined, so this purpose is refused",
                error=INVALID_SCOPE,
            )
        if not set(self.subject_scopes) <= held:
            return Denial(
                code="subject_scope_exceeded",
                description="the subject token's scope does not cover this purpose",
                error=INVALID_SCOPE,
            )
        return None

    def may_replace(self, scope: str) -> bool:
        """Whether a Txn-Token of purpose `scope` may be replaced by one of this purpose (§13.15)."""
        return scope in self.replaces


def _scope_values(value: Any) -> frozenset[str] | None:
    """A space-delimited scope string (RFC 8693 §4.2) or a list of strings (`scp`); None: unknown."""
    if value is MISSING or value is None:
        return None
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    return None


def _refuse(code: str, description: str) -> DenialError:
    return DenialError(Denial(code=code, description=description, error=INVALID_REQUEST))
