"""`exchange rules explain`: a token verified as the exchange would, a dry run, a recorded decision."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from joserfc.jwk import RSAKey

from tests.cli.conftest import exchange, post_exchange
from tests.conftest import write_config
from tests.idp import FakeIdP, load_key
from tests.server import Server, free_port

PURPOSE = "payments.approve"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("explain")
    port = free_port()
    server = Server(write_config(folder, port, idp, idp_ec), port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def explain(server: Server, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = exchange("rules", "explain", *args, "--config", str(server.config), stdin=stdin)
    return result.returncode, result.stdout, result.stderr


def rows(stdout: str) -> dict[str, list[str]]:
    """The rule table, by rule label: [outcome, code, ...requirement words]."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("RULE "))
    table = {}
    for line in lines[start + 1 :]:
        if line.startswith("decision:"):
            break
        label, *rest = line.split()
        table[label] = [" ".join(rest[:2]), *rest[2:]] if rest[:2] == ["not", "evaluated"] else rest
    return table


class TestSubjectToken:
    def test_a_token_the_exchange_would_accept_is_verified_then_each_rule_explained(
        self, served: Server, idp: FakeIdP
    ) -> None:
        code, out, err = explain(served, PURPOSE, "--subject-token", "-", stdin=idp.token() + "\n")

        assert code == 0, err
        assert f"subject: alice from {idp.issuer} (token verified)" in out
        assert rows(out)["claim[amr]"][0] == "allow"
        assert out.splitlines()[-1] == "decision: allow"

    def test_the_rules_deny_what_the_exchange_would_deny(self, served: Server, idp: FakeIdP) -> None:
        code, out, _ = explain(
            served, PURPOSE, "--subject-token", "-", "--json", stdin=idp.token(amr=["pwd"])
        )

        assert code == 1
        result = json.loads(out)
        assert (result["source"], result["sub"], result["refused"]) == ("subject_token", "alice", None)
        assert result["rules"][0]["outcome"] == "deny" and result["rules"][0]["code"] == "claim_mismatch"
        assert (result["decision"], result["denial"]) == ("deny", "claim_mismatch")

    @pytest.mark.parametrize(
        ("make", "reason"),
        [
            (lambda idp: idp.token(exp=int(time.time()) - 3600), "subject_token:expired"),
            (
                lambda idp: idp.token(key=load_key("attacker_ec"), alg="ES256"),
                "subject_token:algorithm_not_allowed",
            ),
            (lambda idp: idp.token(aud="someone-else"), "subject_token:wrong_audience"),
            (
                lambda idp: FakeIdP("https://evil.example", "attacker_ec", "ES256").token(),
                "subject_token:untrusted_issuer",
            ),
            (lambda idp: "not.a.token", "subject_token:malformed"),
        ],
    )
    def test_a_token_the_exchange_would_refuse_shows_the_audit_reason_and_runs_no_rule(
        self, served: Server, idp: FakeIdP, make: object, reason: str
    ) -> None:
        token = make(idp)  # type: ignore[operator]
        code, out, _ = explain(served, PURPOSE, "--subject-token", "-", "--json", stdin=token)

        assert code == 1
        result = json.loads(out)
        assert result["refused"] == reason
        assert {r["outcome"] for r in result["rules"]} == {"not evaluated"}
        assert result["decision"] == "deny"

    def test_a_token_signed_by_another_key_under_the_issuers_kid_is_refused(
        self, served: Server, idp: FakeIdP
    ) -> None:
        forged = idp.token(key=RSAKey.generate_key(2048))  # the issuer's kid and alg, someone else's key
        code, out, _ = explain(served, PURPOSE, "--subject-token", "-", "--json", stdin=forged)
        assert code == 1 and json.loads(out)["refused"] == "subject_token:bad_signature"

    def test_a_token_on_the_command_line_is_refused(self, served: Server, idp: FakeIdP) -> None:
        # Red team round 2: argv is readable by every local user and lands in the shell's history.
        code, out, err = explain(served, PURPOSE, "--subject-token", idp.token())
        assert code == 2 and out == ""
        assert "pass the token on stdin" in err

    def test_a_client_that_may_not_use_the_purpose_is_refused(self, served: Server, idp: FakeIdP) -> None:
        code, out, _ = explain(
            served, PURPOSE, "--subject-token", "-", "--client", "backoffice", "--json", stdin=idp.token()
        )
        assert code == 1
        assert json.loads(out)["refused"] == "client:purpose_not_allowed"


class TestRecorded:
    def test_a_recorded_denial_is_explained_rule_by_rule(self, served: Server, idp: FakeIdP) -> None:
        assert post_exchange(served, idp.token(amr=["pwd"]), "explain-me").status_code == 400

        code, out, err = explain(served, "--request-id", "explain-me")
        as_json = json.loads(explain(served, "--request-id", "explain-me", "--json")[1])

        assert code == 0, err
        assert out.startswith("request explain-me (seq ")
        assert rows(out)["claim[amr]"][:2] == ["deny", "claim_mismatch"]
        assert out.splitlines()[-1] == "decision: denied: claim_mismatch"
        assert as_json["source"] == "audit" and as_json["recorded"]["request_id"] == "explain-me"
        assert as_json["rules"][0]["requirement"]  # what the rule demands today, beside what it answered

    def test_a_decision_refused_before_the_rules_names_its_reason(self, served: Server, idp: FakeIdP) -> None:
        expired = idp.token(exp=int(time.time()) - 3600)
        assert post_exchange(served, expired, "expired-one").status_code == 400

        result = json.loads(explain(served, "--request-id", "expired-one", "--json")[1])

        assert result["refused"] == "subject_token:expired"
        assert [r["outcome"] for r in result["rules"]] == ["not evaluated"]

    def test_an_unknown_request_id_is_one_sentence(self, served: Server) -> None:
        code, _, err = explain(served, "--request-id", "never-happened")
        assert code == 1 and err == "error: no audit record with request id 'never-happened'\n"


def test_exactly_one_source_is_required(served: Server, tmp_path: Path) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text("{}")
    assert explain(served, PURPOSE)[0] == 2
    code, _, err = explain(served, PURPOSE, "--claims", str(claims), "--request-id", "x")
    assert code == 2 and "give exactly one of --subject-token, --claims or --request-id" in err
