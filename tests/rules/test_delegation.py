"""Delegation (RFC 8693 §4.1, §4.4): modes, the actor allow-list, may_act, nesting, depth cap, loops."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from rules import DenialError, PolicyError, PurposePolicy, actor_chain
from tests.rules.conftest import IDP, policy

OTHER_IDP = "https://other-idp.example.com"
ALICE = {"iss": IDP, "sub": "alice"}
BATCH = {"iss": IDP, "sub": "svc-batch"}


def delegation(
    mode: str, actors: str = '[{ issuer = "https://idp.example.com", sub = "svc-batch" }]', more: str = ""
) -> PurposePolicy:
    actors_line = f"actors = {actors}\n" if actors else ""
    return policy(f'[purposes."p".delegation]\nmode = "{mode}"\n{actors_line}{more}')


def denied(
    policy: PurposePolicy,
    subject: dict[str, Any],
    actor: dict[str, Any] | None,
    actor_issuer: str | None = IDP,
    client_id: str | None = None,
) -> str:
    with pytest.raises(DenialError) as caught:
        policy.check_delegation(subject, actor, actor_issuer if actor else None, client_id=client_id)
    assert caught.value.denial.error == "invalid_request"
    return caught.value.denial.code


class TestModes:
    def test_by_default_there_is_no_delegation(self) -> None:
        plain = policy("")
        assert plain.check_delegation(ALICE, None, None) is None
        assert denied(plain, ALICE, BATCH) == "delegation_forbidden"
        # A subject token that is itself delegated is delegation too.
        assert denied(plain, {**ALICE, "act": {"sub": "svc-batch"}}, None) == "delegation_forbidden"

    def test_allowed_accepts_a_listed_actor_or_none(self) -> None:
        allowed = delegation("allowed")
        assert allowed.check_delegation(ALICE, None, None) is None
        assert allowed.check_delegation(ALICE, BATCH, IDP) == {"sub": "svc-batch", "iss": IDP}

    def test_required_demands_an_actor(self) -> None:
        required = delegation("required")
        assert denied(required, ALICE, None) == "actor_token_required"
        assert required.check_delegation(ALICE, BATCH, IDP) == {"sub": "svc-batch", "iss": IDP}


class TestActors:
    @pytest.mark.parametrize(
        ("actor", "issuer"),
        [
            ({"sub": "svc-other"}, IDP),
            # The same sub from another issuer is another party.
            ({"sub": "svc-batch"}, OTHER_IDP),
            ({"client_id": "svc-batch"}, IDP),
            ({"sub": 7}, IDP),
        ],
    )
    def test_an_actor_not_on_the_list_is_refused(self, actor: dict[str, Any], issuer: str) -> None:
        assert denied(delegation("allowed"), ALICE, actor, issuer) == "actor_not_allowed"

    def test_an_actor_may_be_named_by_client_id_and_must_be_the_requesting_client(self) -> None:
        by_client = delegation("allowed", '[{ issuer = "https://idp.example.com", client_id = "svc-batch" }]')
        actor = {"sub": "b7f1", "client_id": "svc-batch"}
        assert by_client.check_delegation(ALICE, actor, IDP, client_id="svc-batch") == {
            "sub": "b7f1",
            "iss": IDP,
            "client_id": "svc-batch",
        }
        # azp names the client in an ID token.
        assert by_client.check_delegation(
            ALICE, {"sub": "b7f1", "azp": "svc-batch"}, IDP, client_id="svc-batch"
        )
        # svc-batch's actor token presented by bank-web is a replayed token.
        assert denied(by_client, ALICE, actor, IDP, client_id="bank-web") == "actor_not_allowed"


class TestMayAct:
    @pytest.mark.parametrize("may_act", [{"sub": "svc-batch"}, {"sub": "svc-batch", "iss": IDP}], ids=repr)
    def test_may_act_naming_the_actor_allows_it(self, may_act: dict[str, Any]) -> None:
        assert delegation("allowed").check_delegation({**ALICE, "may_act": may_act}, BATCH, IDP)

    @pytest.mark.parametrize(
        "may_act",
        [{"sub": "svc-other"}, {"sub": "svc-batch", "iss": OTHER_IDP}, "svc-batch", {}, {"roles": ["x"]}],
        ids=repr,
    )
    def test_may_act_naming_someone_else_refuses(self, may_act: Any) -> None:
        assert denied(delegation("allowed"), {**ALICE, "may_act": may_act}, BATCH) == "may_act_denied"


class TestChains:
    def test_a_delegated_subject_token_nests_the_chain_with_identity_members_only(self) -> None:
        subject = {
            **ALICE,
            "act": {"sub": "svc-a", "roles": ["admin"], "act": {"sub": "svc-b", "iss": OTHER_IDP}},
        }
        act = delegation("allowed").check_delegation(subject, BATCH, IDP)
        assert act == {
            "sub": "svc-batch",
            "iss": IDP,
            "act": {"sub": "svc-a", "iss": IDP, "act": {"sub": "svc-b", "iss": OTHER_IDP}},
        }
        assert actor_chain(act) == (
            {"sub": "svc-batch", "iss": IDP},
            {"sub": "svc-a", "iss": IDP},
            {"sub": "svc-b", "iss": OTHER_IDP},
        )

    def test_without_an_actor_token_the_subjects_chain_is_kept_when_its_actor_is_allowed(self) -> None:
        allowed = delegation("allowed")
        assert allowed.check_delegation({**ALICE, "act": {"sub": "svc-batch"}}, None, None) == {
            "sub": "svc-batch",
            "iss": IDP,
        }
        assert denied(allowed, {**ALICE, "act": {"sub": "svc-other"}}, None) == "actor_not_allowed"

    def test_depth_is_capped_at_four_by_default(self) -> None:
        def chain(n: int) -> dict[str, Any] | None:
            act: dict[str, Any] | None = None
            for i in range(n):
                act = {"sub": f"svc-{i}", **({"act": act} if act else {})}
            return act

        allowed = delegation("allowed")
        assert allowed.check_delegation({**ALICE, "act": chain(3)}, BATCH, IDP) is not None
        assert denied(allowed, {**ALICE, "act": chain(4)}, BATCH) == "delegation_too_deep"
        # A hostile, deeply nested act is refused without walking all of it.
        assert denied(allowed, {**ALICE, "act": chain(500)}, BATCH) == "delegation_too_deep"

    def test_depth_cap_is_configurable(self) -> None:
        shallow = delegation("allowed", more="max_depth = 1\n")
        assert shallow.check_delegation(ALICE, BATCH, IDP) is not None
        assert denied(shallow, {**ALICE, "act": {"sub": "svc-a"}}, BATCH) == "delegation_too_deep"

    @pytest.mark.parametrize(
        ("subject", "actor"),
        [
            # The subject acting for itself.
            ({"iss": IDP, "sub": "svc-batch"}, BATCH),
            # An actor already in the chain.
            ({**ALICE, "act": {"sub": "svc-a", "act": {"sub": "svc-batch"}}}, BATCH),
            # The user reappearing as an actor for itself.
            ({**ALICE, "act": {"sub": "svc-batch", "act": {"sub": "alice"}}}, None),
        ],
    )
    def test_loops_are_refused(self, subject: dict[str, Any], actor: dict[str, Any] | None) -> None:
        assert denied(delegation("allowed"), subject, actor) == "delegation_loop"

    @pytest.mark.parametrize(
        "act", ["svc-a", {"client_id": "x"}, {"sub": "svc-a", "act": ["svc-b"]}], ids=repr
    )
    def test_a_malformed_act_claim_is_refused(self, act: Any) -> None:
        assert denied(delegation("allowed"), {**ALICE, "act": act}, BATCH) == "delegation_invalid"


class TestConfiguration:
    @pytest.mark.parametrize(
        ("mode", "actors", "problem"),
        [
            ("allowed", "", 'delegation: mode "allowed" needs at least one entry in actors (who may act)'),
            (
                "required",
                "[]",
                'delegation: mode "required" needs at least one entry in actors (who may act)',
            ),
            (
                "forbidden",
                '[{ issuer = "https://idp.example.com", sub = "x" }]',
                'delegation: actors are listed but mode is "forbidden"; set mode = "allowed" or "required"',
            ),
            (
                "allowed",
                '[{ issuer = "https://idp.example.com" }]',
                "delegation.actors[0]: an actor needs exactly one of sub or client_id",
            ),
            (
                "allowed",
                '[{ issuer = "https://idp.example.com", sub = "a", client_id = "svc-batch" }]',
                "delegation.actors[0]: an actor needs exactly one of sub or client_id",
            ),
            (
                "allowed",
                '[{ issuer = "https://nobody.example.com", sub = "a" }]',
                "delegation.actors[0]: issuer 'https://nobody.example.com' is not a trusted issuer, "
                "so no actor token from it is accepted",
            ),
            (
                "allowed",
                '[{ issuer = "https://idp.example.com", client_id = "ghost" }]',
                "delegation.actors[0]: client_id 'ghost' is not a configured client",
            ),
        ],
    )
    def test_bad_delegation_settings_are_rejected(self, mode: str, actors: str, problem: str) -> None:
        with pytest.raises(PolicyError) as caught:
            delegation(mode, actors)
        assert caught.value.problems == [f'purposes."p".{problem}']

    def test_max_depth_is_bounded(self) -> None:
        with pytest.raises(
            msgspec.ValidationError,
            match=r"Expected `int` >= 1 - at `\$.purposes\[...\].delegation.max_depth`",
        ):
            delegation("allowed", more="max_depth = 0\n")
