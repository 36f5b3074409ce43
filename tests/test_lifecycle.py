"""The signing-key lifecycle as pure functions of the stored keys and `now` (exchange/lifecycle.py)."""

from __future__ import annotations

import msgspec
import pytest

from exchange import lifecycle
from exchange.config import parse_settings
from exchange.lifecycle import LifecycleError, Timing
from exchange.store.base import AddKey, KeyChange, MoveKey, RewrapKey
from schemas.records import StoredKey

T0 = 1_800_000_000.0
# max-age 300 + margin 60 before signing; ttl 120 + leeway 120 + max-age 300 after.
TIMING = Timing(jwks_max_age=300, margin=60, longest_ttl=120)


def key(kid: str, state: str, *, created: float = T0, alg: str = "ES256", **times: float) -> StoredKey:
    return StoredKey(
        kid=kid,
        alg=alg,
        state=state,  # type: ignore[arg-type]
        created_at=created,
        public_jwk="{}",
        private_jwk=None if state == "retired" else b"sealed",
        **times,  # type: ignore[arg-type]
    )


def apply(keys: list[StoredKey], changes: list[KeyChange] | tuple[KeyChange, ...]) -> list[StoredKey]:
    """What the store would hold after the changes (the same moves the SQL makes)."""
    out = {k.kid: k for k in keys}
    for c in changes:
        if isinstance(c, AddKey):
            out[c.key.kid] = c.key
        elif isinstance(c, MoveKey):
            k = out[c.kid]
            assert k.state == c.from_state
            stamp = {"current": "activated_at", "previous": "deactivated_at", "retired": "retired_at"}
            out[c.kid] = msgspec.structs.replace(k, state=c.to_state, **{stamp[c.to_state]: c.at})
        elif isinstance(c, RewrapKey):
            out[c.kid] = msgspec.structs.replace(out[c.kid], private_jwk=c.private_jwk, kek_id=c.kek_id)
    return list(out.values())


def states(keys: list[StoredKey]) -> dict[str, str]:
    return {k.kid: k.state for k in keys}


CANDIDATE = key("new", "next")


class TestTiming:
    def test_the_waits_are_derived_from_max_age_margin_ttl_and_leeway(self) -> None:
        assert TIMING.publish_before_signing == 360
        assert TIMING.publish_after_signing == 540

    def test_a_max_age_below_what_our_verifiers_cache_at_least_waits_for_their_floor(self) -> None:
        t = Timing(jwks_max_age=5, margin=10, longest_ttl=60)
        assert (t.cache_lifetime, t.publish_before_signing) == (60, 70)

    def test_the_longest_token_lifetime_comes_from_the_purposes_and_txn_tokens(self) -> None:
        settings = parse_settings(
            {
                "issuer": "https://x.example",
                "purposes": {
                    "a": {"audience": "https://a", "ttl": 30},
                    "b": {"audience": "https://b", "ttl": 90},
                },
                "signing": {"jwks_max_age": 120, "activation_margin": 15, "rotate_every": "30d"},
            }
        )
        t = Timing.of(settings)
        assert (t.longest_ttl, t.jwks_max_age, t.margin, t.rotate_every) == (90, 120, 15, 30 * 86400)


class TestAdvance:
    def test_a_next_key_becomes_current_exactly_when_every_cache_has_it(self) -> None:
        keys = [key("old", "current", activated_at=T0 - 1000), key("new", "next", created=T0)]
        due = T0 + 360
        early = lifecycle.advance(keys, due - 1, TIMING, algorithm="ES256", candidate=None)
        assert early.changes == () and not early.wants_key
        step = lifecycle.advance(keys, due, TIMING, algorithm="ES256", candidate=None)
        after = apply(keys, step.changes)
        assert states(after) == {"old": "previous", "new": "current"}
        assert {k.kid: (k.activated_at, k.deactivated_at) for k in after} == {
            "old": (T0 - 1000, due),
            "new": (due, None),
        }

    def test_a_previous_key_is_retired_exactly_when_no_token_it_signed_can_be_alive(self) -> None:
        keys = [key("old", "previous", deactivated_at=T0), key("cur", "current", activated_at=T0)]
        due = T0 + 540
        assert lifecycle.advance(keys, due - 1, TIMING, algorithm="ES256", candidate=None).changes == ()
        step = lifecycle.advance(keys, due, TIMING, algorithm="ES256", candidate=None)
        assert step.changes == (MoveKey("old", "previous", "retired", due),)

    def test_scheduled_rotation_stages_a_successor_once_the_period_has_passed(self) -> None:
        t = Timing(jwks_max_age=300, margin=60, longest_ttl=120, rotate_every=86400)
        keys = [key("cur", "current", activated_at=T0)]
        assert lifecycle.advance(keys, T0 + 86399, t, algorithm="ES256", candidate=None).changes == ()
        wanting = lifecycle.advance(keys, T0 + 86400, t, algorithm="ES256", candidate=None)
        assert wanting.changes == () and wanting.wants_key
        step = lifecycle.advance(keys, T0 + 86400, t, algorithm="ES256", candidate=CANDIDATE)
        [added] = step.changes
        assert isinstance(added, AddKey)
        assert (added.key.state, added.key.created_at) == ("next", T0 + 86400)

    def test_a_staged_key_is_not_staged_again(self) -> None:
        t = Timing(rotate_every=3600)
        keys = [key("cur", "current", activated_at=T0), key("nxt", "next", created=T0 + 3600)]
        step = lifecycle.advance(keys, T0 + 3700, t, algorithm="ES256", candidate=CANDIDATE)
        assert step.changes == () and not step.wants_key

    def test_a_changed_algorithm_stages_a_key_of_the_new_one_through_the_same_lifecycle(self) -> None:
        keys = [key("cur", "current", activated_at=T0)]
        wanting = lifecycle.advance(keys, T0 + 1, TIMING, algorithm="EdDSA", candidate=None)
        assert wanting.wants_key
        ed = key("ed", "next", alg="EdDSA")
        step = lifecycle.advance(keys, T0 + 1, TIMING, algorithm="EdDSA", candidate=ed)
        after = apply(keys, step.changes)
        assert states(after) == {"cur": "current", "ed": "next"}  # both published; the old one signs

    def test_a_first_start_makes_a_current_key_at_once(self) -> None:
        assert lifecycle.advance([], T0, TIMING, algorithm="ES256", candidate=None).wants_key
        step = lifecycle.advance([], T0, TIMING, algorithm="ES256", candidate=CANDIDATE)
        [added] = step.changes
        assert isinstance(added, AddKey) and added.key.state == "current" and added.key.activated_at == T0

    def test_with_no_current_key_a_staged_one_signs_rather_than_none(self) -> None:
        keys = [key("nxt", "next", created=T0)]
        step = lifecycle.advance(keys, T0 + 1, TIMING, algorithm="ES256", candidate=None)
        assert states(apply(keys, step.changes)) == {"nxt": "current"}


class TestOperatorSteps:
    def test_rotate_stages_and_rotating_twice_is_rotating_once(self) -> None:
        keys = [key("cur", "current", activated_at=T0)]
        after = apply(keys, lifecycle.stage(keys, T0 + 5, CANDIDATE))
        assert states(after) == {"cur": "current", "new": "next"}
        assert lifecycle.stage(after, T0 + 6, key("other", "next")) == []

    def test_rotate_now_promotes_the_staged_key_if_there_is_one(self) -> None:
        keys = [key("cur", "current", activated_at=T0), key("nxt", "next", created=T0)]
        after = apply(keys, lifecycle.rotate_now(keys, T0 + 5, CANDIDATE))
        assert states(after) == {"cur": "previous", "nxt": "current"}

    def test_rotate_now_without_a_staged_key_signs_with_a_new_one_at_once(self) -> None:
        keys = [key("cur", "current", activated_at=T0)]
        after = apply(keys, lifecycle.rotate_now(keys, T0 + 5, CANDIDATE))
        assert states(after) == {"cur": "previous", "new": "current"}

    def test_revoking_the_current_key_promotes_the_staged_one(self) -> None:
        keys = [key("cur", "current"), key("nxt", "next")]
        changes = lifecycle.revoke(keys, "cur", T0 + 5, CANDIDATE)
        assert changes[0] == MoveKey("cur", "current", "retired", T0 + 5, revoked=True)
        assert states(apply(keys, changes)) == {"cur": "retired", "nxt": "current"}

    def test_revoking_the_current_key_with_none_staged_makes_a_replacement(self) -> None:
        keys = [key("cur", "current"), key("prev", "previous", deactivated_at=T0)]
        after = apply(keys, lifecycle.revoke(keys, "cur", T0 + 5, CANDIDATE))
        assert states(after) == {"cur": "retired", "prev": "previous", "new": "current"}

    @pytest.mark.parametrize("state", ["next", "previous"])
    def test_revoking_a_key_that_does_not_sign_only_retires_it(self, state: str) -> None:
        keys = [key("cur", "current"), key("k", state)]
        after = apply(keys, lifecycle.revoke(keys, "k", T0 + 5, CANDIDATE))
        assert states(after) == {"cur": "current", "k": "retired"}

    def test_revoking_a_retired_key_changes_nothing_and_an_unknown_kid_is_refused(self) -> None:
        keys = [key("cur", "current"), key("gone", "retired")]
        assert lifecycle.revoke(keys, "gone", T0, CANDIDATE) == []
        with pytest.raises(LifecycleError, match="no signing key 'nope' in the store"):
            lifecycle.revoke(keys, "nope", T0, CANDIDATE)

    def test_an_imported_key_is_refused_while_another_is_staged(self) -> None:
        keys = [key("cur", "current"), key("nxt", "next")]
        with pytest.raises(LifecycleError, match="key nxt is already staged as next"):
            lifecycle.stage_imported(keys, T0, CANDIDATE)

    def test_rewrap_reseals_every_key_with_a_private_half_not_under_the_new_kek(self) -> None:
        keys = [key("cur", "current"), key("gone", "retired"), key("prev", "previous")]
        changes = lifecycle.rewrap(keys, "kek-2", lambda k: b"resealed-" + k.kid.encode())
        assert sorted(c.kid for c in changes) == ["cur", "prev"]
        assert lifecycle.rewrap(apply(keys, changes), "kek-2", lambda k: b"x") == []


class TestConfigCheck:
    def test_a_rotation_period_shorter_than_one_lifecycle_is_refused(self) -> None:
        from exchange.errors import ConfigError

        raw = {"issuer": "https://x.example", "signing": {"rotate_every": "1h", "jwks_max_age": 3600}}
        with pytest.raises(ConfigError) as refused:
            parse_settings(raw)
        [problem] = refused.value.problems
        assert "signing.rotate_every: 1h is shorter than one key's lifecycle" in problem

    def test_a_rotation_period_that_fits_is_accepted(self) -> None:
        settings = parse_settings({"issuer": "https://x.example", "signing": {"rotate_every": "1d"}})
        assert settings.signing.rotate_every_seconds == 86400
