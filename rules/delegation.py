"""RFC 8693 delegation: who may act for the subject, and the `act` claim the purpose token carries.

Only the current (outermost) actor is an access-control decision (RFC 8693 §4.1); the prior chain,
taken from a subject token that was itself delegated, is carried along for accountability, bounded in
depth and checked for loops, and reduced to identity members so no other claim rides along.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rules.denials import Denial, DenialError
from schemas.rules import Actor, Delegation

if TYPE_CHECKING:
    from rules.rule import Scope

# The members of an `act` entry that identify an actor; everything else is dropped.
_IDENTITY = ("sub", "iss", "client_id")


def _deny(code: str, description: str) -> DenialError:
    return DenialError(Denial(code=code, description=description))


def actor_chain(act: Mapping[str, Any] | None) -> tuple[dict[str, Any], ...]:
    """The actors of an `act` claim, current actor first (for RuleContext.actor_chain)."""
    chain: list[dict[str, Any]] = []
    while isinstance(act, Mapping):
        chain.append({k: act[k] for k in _IDENTITY if k in act})
        act = act.get("act")
    return tuple(chain)


class DelegationPolicy:
    """One purpose's delegation settings, compiled."""

    def __init__(self, config: Delegation) -> None:
        self.mode = config.mode
        self.actors: tuple[Actor, ...] = tuple(config.actors)
        self.max_depth = config.max_depth

    @classmethod
    def compile(cls, config: Delegation, scope: Scope) -> DelegationPolicy:
        base = scope.where
        scope.where = f"{base}.delegation"
        if config.mode != "forbidden" and not config.actors:
            scope.problem(f'mode "{config.mode}" needs at least one entry in actors (who may act)')
        if config.mode == "forbidden" and config.actors:
            scope.problem('actors are listed but mode is "forbidden"; set mode = "allowed" or "required"')
        issuers = {t.issuer for t in scope.settings.trusted_issuers}
        if scope.settings.dev_issuer is not None:
            issuers.add(scope.settings.dev_issuer.issuer)
        clients = {c.client_id for c in scope.settings.clients}
        for i, actor in enumerate(config.actors):
            scope.where = f"{base}.delegation.actors[{i}]"
            if (actor.sub is None) == (actor.client_id is None):
                scope.problem("an actor needs exactly one of sub or client_id")
            if actor.issuer not in issuers:
                scope.problem(
                    f"issuer {actor.issuer!r} is not a trusted issuer, so no actor token from it is accepted"
                )
            if actor.client_id is not None and actor.client_id not in clients:
                scope.problem(f"client_id {actor.client_id!r} is not a configured client")
        scope.where = base
        return cls(config)

    def check(
        self,
        subject: Mapping[str, Any],
        actor: Mapping[str, Any] | None,
        actor_issuer: str | None,
        *,
        client_id: str | None = None,
    ) -> dict[str, Any] | None:
        """The `act` claim for the purpose token, or None; raises DenialError.

        `subject` and `actor` are the verified claims of the subject and actor tokens; `client_id` is the
        authenticated requesting client (an actor allowed by client_id must be that client).
        """
        subject_iss = subject.get("iss") if isinstance(subject.get("iss"), str) else None
        prior = self._prior_chain(subject.get("act"), subject_iss)
        if actor is None:
            if self.mode == "required":
                raise _deny("actor_token_required", "this purpose requires an actor_token (delegation)")
            if not prior:
                return None
            if self.mode == "forbidden":
                raise _deny("delegation_forbidden", "this purpose does not accept delegated subject tokens")
            current, rest = prior[0], prior[1:]
            # The subject token's issuer vouched for this actor; it must still be one we allow.
            if not self._allowed(current, current.get("iss"), client_id):
                raise _deny("actor_not_allowed", "the acting party is not allowed for this purpose")
            self._check_chain(subject, prior)
            return _nest(current, rest)
        if self.mode == "forbidden":
            raise _deny("delegation_forbidden", "this purpose does not accept an actor_token")
        sub = actor.get("sub")
        if not isinstance(sub, str) or not sub or not actor_issuer:
            raise _deny("actor_not_allowed", "the actor_token does not identify its subject")
        current = {"sub": sub, "iss": actor_issuer}
        actor_client = actor.get("client_id", actor.get("azp"))
        if isinstance(actor_client, str):
            current["client_id"] = actor_client
        if not self._allowed(current, actor_issuer, client_id):
            raise _deny("actor_not_allowed", "the actor is not allowed to act for this purpose")
        self._check_may_act(subject.get("may_act", None), current, "may_act" in subject, subject_iss)
        self._check_chain(subject, [current, *prior])
        return _nest(current, prior)

    def _allowed(self, identity: Mapping[str, Any], issuer: Any, client_id: str | None) -> bool:
        for allowed in self.actors:
            if allowed.issuer != issuer:
                continue
            if allowed.sub is not None and identity.get("sub") == allowed.sub:
                return True
            if (
                allowed.client_id is not None
                and identity.get("client_id") == allowed.client_id
                # A client's actor token presented by another client is someone replaying it.
                and (client_id is None or client_id == allowed.client_id)
            ):
                return True
        return False

    def _prior_chain(self, act: Any, subject_iss: str | None) -> list[dict[str, Any]]:
        chain: list[dict[str, Any]] = []
        while act is not None:
            if not isinstance(act, Mapping) or not isinstance(act.get("sub"), str):
                raise _deny("delegation_invalid", "the subject token's act claim is malformed")
            if len(chain) >= self.max_depth:
                raise _deny(
                    "delegation_too_deep", f"delegation chains are limited to {self.max_depth} actors"
                )
            entry = {k: act[k] for k in _IDENTITY if isinstance(act.get(k), str)}
            # An act entry without iss names an actor in the namespace of the token's issuer.
            if "iss" not in entry and subject_iss is not None:
                entry["iss"] = subject_iss
            chain.append(entry)
            act = act.get("act")
        return chain

    def _check_chain(self, subject: Mapping[str, Any], chain: list[dict[str, Any]]) -> None:
        if len(chain) > self.max_depth:
            raise _deny("delegation_too_deep", f"delegation chains are limited to {self.max_depth} actors")
        seen = {(subject.get("iss"), subject.get("sub"))}
        for entry in chain:
            who = (entry.get("iss"), entry.get("sub"))
            if who in seen:
                raise _deny("delegation_loop", "an actor appears twice in the delegation chain")
            seen.add(who)

    @staticmethod
    def _check_may_act(
        may_act: Any, current: Mapping[str, Any], present: bool, subject_iss: str | None
    ) -> None:
        """RFC 8693 §4.4: when the subject names who may act, the actor must be that party.

        A `may_act` without `iss` names a subject of the subject token's issuer, never a same-named
        subject of another trusted issuer (alice at one identity provider is not alice at another).
        """
        if not present:
            return
        if not isinstance(may_act, Mapping) or not any(k in may_act for k in _IDENTITY):
            raise _deny("may_act_denied", "the subject token's may_act claim does not allow this actor")
        expected = dict(may_act)
        if "iss" not in expected:
            if subject_iss is None:
                raise _deny("may_act_denied", "the subject token's may_act claim does not allow this actor")
            expected["iss"] = subject_iss
        for key in _IDENTITY:
            if key in expected and expected[key] != current.get(key):
                raise _deny("may_act_denied", "the subject token's may_act claim does not allow this actor")


def _nest(current: Mapping[str, Any], rest: list[dict[str, Any]]) -> dict[str, Any]:
    act = dict(current)
    cursor = act
    for entry in rest:
        cursor["act"] = dict(entry)
        cursor = cursor["act"]
    return act
