"""rules/txn.py: a purpose's Txn-Token mapping compiled from config, and the config checks of
[txn_tokens] (exchange/config.py): every problem named by its key."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from exchange.config import check_settings
from rules import PolicyError, compile_policies
from schemas.config import Settings

HEAD = """
issuer = "http://127.0.0.1:8080"
[[trusted_issuers]]
issuer = "https://idp.example.com"
jwks_uri = "https://idp.example.com/jwks"
audiences = ["purpose-exchange"]
[[clients]]
client_id = "gateway"
auth_method = "client_secret_basic"
secret_hash = "scrypt$16384$8$1$c2FsdA$aGFzaA"
purposes = ["orders"]
[[clients]]
client_id = "web"
purposes = ["orders"]
"""


def parse(text: str) -> Settings:
    return msgspec.toml.decode(HEAD + text, type=Settings)


def problems(text: str) -> list[str]:
    settings = parse(text)
    found = check_settings(settings)
    try:
        compile_policies(settings)
    except PolicyError as exc:
        found += exc.problems
    return found


TXN = """
[txn_tokens]
trust_domain = "td.example"
[[txn_tokens.workloads]]
client_id = "gateway"
"""


class TestMapping:
    def test_a_mapping_compiles(self) -> None:
        policy = compile_policies(
            parse(
                TXN
                + """
[purposes.orders]
[purposes.orders.authorization_details.order]
item = { type = "string", required = true }
[purposes.orders.txn_token]
request_details = "order"
request_context = { req_ip = { type = "string" } }
"""
            )
        )["orders"]
        assert policy.txn is not None and policy.audiences == ()
        assert policy.txn.subject_scopes == ("orders",) and policy.txn.replaces == frozenset({"orders"})
        assert policy.txn.transaction_context('{"item": "a"}') == {"item": "a"}
        assert policy.txn.details({"item": "a"}) == [{"type": "order", "item": "a"}]
        assert policy.txn.request_context('{"req_ip": "1.2.3.4", "other": 1}') == {"req_ip": "1.2.3.4"}

    @pytest.mark.parametrize(
        ("subject", "denial"),
        [
            ({"scope": "orders other"}, None),
            ({"scope": ["orders"]}, None),
            ({"scope": "ordersX"}, "subject_scope_exceeded"),  # a scope is a word, never a substring
            ({}, "subject_scope_unknown"),
            ({"scope": 7}, "subject_scope_unknown"),
            ({"scope": ["orders", 1]}, "subject_scope_unknown"),
        ],
    )
    def test_the_subjects_scope(self, subject: dict[str, Any], denial: str | None) -> None:
        policy = compile_policies(parse(TXN + "[purposes.orders]\n[purposes.orders.txn_token]\n"))["orders"]
        assert policy.txn is not None
        found = policy.txn.scope_denial(subject)
        assert (found.code if found else None) == denial
        if found:
            assert found.error == "invalid_scope"

    def test_a_scope_claim_and_required_scopes_are_configurable(self) -> None:
        text = (
            TXN
            + '[purposes.orders]\n[purposes.orders.txn_token]\nscope_claim = "scp"\nsubject_scopes = ["a", "b"]\n'  # noqa: E501
        )
        policy = compile_policies(parse(text))["orders"]
        assert policy.txn is not None
        assert policy.txn.scope_denial({"scp": ["b", "a"]}) is None
        denial = policy.txn.scope_denial({"scp": ["a"], "scope": "a b"})
        assert denial is not None and denial.code == "subject_scope_exceeded"

    @pytest.mark.parametrize(
        ("purpose", "problem"),
        [
            ('[purposes.orders.txn_token]\nrequest_details = "nope"',
             "purposes.\"orders\".txn_token: request_details names 'nope', which is not one of the "
             "purpose's authorization_details types (accepted: none)"),
            ('[purposes.orders.txn_token]\nreplaces = ["ghost"]',
             "purposes.\"orders\".txn_token: replaces: 'ghost' is not a configured purpose"),
            ('[purposes.orders.txn_token]\nsubject_scopes = ["a b"]',
             "purposes.\"orders\".txn_token: subject_scopes: 'a b' is not one scope value (no spaces)"),
            ('[purposes.orders.txn_token.request_context]\nx = { type = "boolean", pattern = "a" }',
             "purposes.\"orders\".txn_token.request_context.x: pattern/min_length apply to string or array"
             " fields, not boolean"),
            ("ttl = 60",
             'purposes."orders": a purpose needs an audience (for purpose tokens) or a txn_token table (or both)'),  # noqa: E501
        ],
    )  # fmt: skip
    def test_mapping_problems_name_their_key(self, purpose: str, problem: str) -> None:
        assert problem in problems(TXN + "[purposes.orders]\n" + purpose + "\n")

    def test_a_purpose_cannot_replace_one_that_issues_no_txn_tokens(self) -> None:
        text = (
            TXN
            + """
[purposes.orders]
[purposes.orders.txn_token]
replaces = ["payments"]
[purposes.payments]
audience = "https://payments.internal"
"""
        )
        assert (
            "purposes.\"orders\".txn_token: replaces: purpose 'payments' does not issue Txn-Tokens"
            in problems(text)
        )

    def test_a_txn_purpose_needs_the_txn_tokens_section(self) -> None:
        found = problems("[purposes.orders]\n[purposes.orders.txn_token]\n")
        assert (
            'purposes."orders".txn_token: a purpose that issues Txn-Tokens needs a [txn_tokens] section'
            in found
        )


class TestConfig:
    def workloads(self, body: str, extra: str = "") -> list[str]:
        return problems(
            '[txn_tokens]\ntrust_domain = "td.example"\n'
            + body
            + extra
            + "\n[purposes.orders]\n[purposes.orders.txn_token]\n"
        )

    def test_a_valid_section_has_no_problems(self) -> None:
        assert self.workloads('[[txn_tokens.workloads]]\nclient_id = "gateway"\n') == []

    @pytest.mark.parametrize(
        ("body", "problem"),
        [
            ('client_id = "ghost"', "txn_tokens.workloads[0] (ghost): not a configured client"),
            ('client_id = "web"',
             "txn_tokens.workloads[0] (web): a workload must authenticate (its client's auth_method is none)"),  # noqa: E501
            ('client_id = "gateway"\nsubject_token_types = ["self_signed"]',
             "txn_tokens.workloads[0] (gateway): self_signed subjects need the client's keys (jwks_file or jwks_uri)"),  # noqa: E501
            ('client_id = "gateway"\nsubject_token_types = ["unsigned_json"]\nsubject_namespace = "https://evil.example"',
             "txn_tokens.workloads[0] (gateway).subject_namespace: 'https://evil.example' is not a trusted issuer"  # noqa: E501
             " (unset: the workload's own namespace)"),
            ('client_id = "gateway"\nsubject_namespace = "https://idp.example.com"',
             "txn_tokens.workloads[0] (gateway).subject_namespace: only used with self_signed or unsigned_json"),  # noqa: E501
            ('client_id = "a,b"', "txn_tokens.workloads[0] (a,b): a workload id may not contain ',' (req_wl)"),  # noqa: E501
        ],
    )  # fmt: skip
    def test_workload_problems_name_their_key(self, body: str, problem: str) -> None:
        assert problem in self.workloads("[[txn_tokens.workloads]]\n" + body + "\n")

    @pytest.mark.parametrize("kind", ["unsigned_json", "self_signed"])
    @pytest.mark.parametrize("client_id", ["https://idp.example.com", "http://127.0.0.1:8080"])
    def test_a_workload_named_like_an_issuer_cannot_name_its_users(self, kind: str, client_id: str) -> None:
        # Red team round 2: its subjects' namespace defaults to its client id, so "https://idp.example.com
        # alice" from an unsigned JSON object would be the identity provider's alice (or ours) downstream.
        client = (
            f'[[clients]]\nclient_id = "{client_id}"\nauth_method = "private_key_jwt"\n'
            f'jwks_uri = "https://keys.example.com/jwks"\npurposes = ["orders"]\n'
        )
        body = f'[[txn_tokens.workloads]]\nclient_id = "{client_id}"\nsubject_token_types = ["{kind}"]\n'
        found = self.workloads(body, "\n" + client)
        assert any(f"its client id is the issuer {client_id!r}" in p for p in found), found
        # A trusted issuer's tokens only (their namespace is the issuer's anyway): no problem.
        plain = f'[[txn_tokens.workloads]]\nclient_id = "{client_id}"\n'
        assert self.workloads(plain, "\n" + client) == []

    def test_a_workload_is_listed_once(self) -> None:
        entry = '[[txn_tokens.workloads]]\nclient_id = "gateway"\n'
        assert "txn_tokens.workloads[1] (gateway): listed twice" in self.workloads(entry + entry)

    def test_the_trust_domain_is_no_purpose_tokens_audience(self) -> None:
        found = self.workloads("", '\n[purposes.pay]\naudience = "td.example"\n')
        assert any("is the Txn-Token trust domain" in p for p in found)

    def test_unknown_keys_and_lifetimes_beyond_fifteen_minutes_are_refused(self) -> None:
        with pytest.raises(msgspec.ValidationError):
            parse('[txn_tokens]\ntrust_domain = "td"\nttl = 3600\n')
        with pytest.raises(msgspec.ValidationError):
            parse('[txn_tokens]\ntrust_domain = "td"\nsurprise = 1\n')
        with pytest.raises(msgspec.ValidationError):
            parse(
                '[txn_tokens]\ntrust_domain = "td"\n[[txn_tokens.workloads]]\nclient_id = "g"\nsubject_token_types = ["refresh_token"]\n'  # noqa: E501
            )
