"""authorization_details (RFC 9396): accepted types, field schemas, size and depth caps."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rules import Denial, DenialError, PolicyError, PurposePolicy
from rules.details import MAX_DETAILS_BYTES, MAX_DETAILS_ENTRIES
from tests.rules.conftest import policy

SCHEMA = """
[purposes."p".authorization_details.payment]
amount   = { type = "number", required = true, minimum = 0.01, maximum = 1000000 }
currency = { type = "string", required = true, enum = ["EUR", "USD", "GBP"] }
account  = { type = "string", pattern = "^[A-Z0-9]{8,34}$" }
memo     = { type = "string", min_length = 2, max_length = 10 }
count    = { type = "integer", minimum = 1 }
urgent   = { type = "boolean" }

[purposes."p".authorization_details.report]
actions  = { type = "array", enum = ["read", "export"], max_items = 2 }
"""


@pytest.fixture(scope="module")
def payments() -> PurposePolicy:
    return policy(SCHEMA)


def payment(**fields: Any) -> str:
    return json.dumps([{"type": "payment", "amount": 10, "currency": "EUR", **fields}])


def rejected(policy: PurposePolicy, raw: str) -> Denial:
    with pytest.raises(DenialError) as caught:
        policy.validate_details(raw)
    assert caught.value.denial.error == "invalid_authorization_details"
    return caught.value.denial


class TestAccepted:
    def test_absent_details_are_an_empty_list(self, payments: PurposePolicy) -> None:
        assert payments.validate_details(None) == []
        assert payments.validate_details("[]") == []

    def test_valid_entries_come_back_validated(self, payments: PurposePolicy) -> None:
        raw = json.dumps(
            [
                {
                    "amount": 12.5,
                    "currency": "USD",
                    "type": "payment",
                    "account": "FR76300060",
                    "urgent": True,
                },
                {"type": "report", "actions": ["read", "export"]},
            ]
        )
        assert payments.validate_details(raw) == [
            {"type": "payment", "amount": 12.5, "currency": "USD", "account": "FR76300060", "urgent": True},
            {"type": "report", "actions": ["read", "export"]},
        ]

    def test_the_accepted_types_are_published(self, payments: PurposePolicy) -> None:
        assert payments.detail_types == ("payment", "report")


class TestRejected:
    @pytest.mark.parametrize(
        ("raw", "code", "description"),
        [
            ("not json", "authorization_details_malformed", None),
            ('{"type": "payment"}', "authorization_details_malformed", None),
            ('["payment"]', "authorization_details_malformed", None),
            ('[{"type": "payment", "amount": null}]', "authorization_details_malformed", None),
            # Depth is bounded by the shape: field values are scalars or flat arrays, never objects.
            ('[{"type": "payment", "amount": {"value": 10}}]', "authorization_details_malformed", None),
            ('[{"type": "report", "actions": [["read"]]}]', "authorization_details_malformed", None),
            ("[" * 5000 + "]" * 5000, "authorization_details_too_large", None),
            ("[" * 1000 + "]" * 1000, "authorization_details_malformed", None),
            ('[{"amount": 10}]', "detail_type_missing", "authorization_details[0] must have a string type"),
            ('[{"type": 7}]', "detail_type_missing", "authorization_details[0] must have a string type"),
            (
                '[{"type": "transfer", "amount": 10}]',
                "unknown_detail_type",
                "authorization_details[0]: type is not accepted for this purpose",
            ),
            (
                payment(beneficiary="mallory"),
                "unknown_detail_field",
                "authorization_details[0] (payment) has a field that is not accepted",
            ),
            (
                '[{"type": "payment", "currency": "EUR"}]',
                "detail_field_missing",
                "authorization_details[0] (payment) needs amount",
            ),
            (
                payment(amount="10"),
                "invalid_detail_field",
                "authorization_details[0].amount must be a number",
            ),
            (
                payment(amount=True),
                "invalid_detail_field",
                "authorization_details[0].amount must be a number",
            ),
            (
                payment(amount=0),
                "invalid_detail_field",
                "authorization_details[0].amount must be at least 0.01",
            ),
            (
                payment(amount=1000000.5),
                "invalid_detail_field",
                "authorization_details[0].amount must be at most 1000000",
            ),
            (
                payment(currency="JPY"),
                "invalid_detail_field",
                "authorization_details[0].currency must be one of the accepted values",
            ),
            (
                payment(account="fr76-3000"),
                "invalid_detail_field",
                "authorization_details[0].account must match the accepted format",
            ),
            (
                payment(memo="x" * 11),
                "invalid_detail_field",
                "authorization_details[0].memo must be at most 10 characters",
            ),
            (
                payment(memo="x"),
                "invalid_detail_field",
                "authorization_details[0].memo must be at least 2 characters",
            ),
            (payment(count=1.5), "invalid_detail_field", "authorization_details[0].count must be a integer"),
            (payment(count=0), "invalid_detail_field", "authorization_details[0].count must be at least 1"),
            (
                payment(urgent="yes"),
                "invalid_detail_field",
                "authorization_details[0].urgent must be a boolean",
            ),
            (
                # Out of float range: refused by the parser itself.
                '[{"type": "payment", "amount": 1e400, "currency": "EUR"}]',
                "authorization_details_malformed",
                None,
            ),
            (
                '[{"type": "report", "actions": ["read", "delete"]}]',
                "invalid_detail_field",
                "authorization_details[0].actions item must be one of the accepted values",
            ),
            (
                '[{"type": "report", "actions": ["read", "read", "read"]}]',
                "invalid_detail_field",
                "authorization_details[0].actions must have at most 2 items",
            ),
            (
                '[{"type": "report", "actions": "read"}]',
                "invalid_detail_field",
                "authorization_details[0].actions must be an array of strings",
            ),
            (
                '[{"type": "report", "actions": [1]}]',
                "invalid_detail_field",
                "authorization_details[0].actions item must be a string",
            ),
        ],
    )
    def test_invalid_details_are_refused(
        self, payments: PurposePolicy, raw: str, code: str, description: str | None
    ) -> None:
        denial = rejected(payments, raw)
        assert denial.code == code
        if description is not None:
            assert denial.description == description

    def test_an_unknown_fields_name_is_not_echoed(self, payments: PurposePolicy) -> None:
        denial = rejected(payments, payment(**{"<script>": 1}))
        assert "<script>" not in denial.description

    def test_oversized_details_are_refused_before_parsing(self, payments: PurposePolicy) -> None:
        raw = payment(memo="ok") + " " * (MAX_DETAILS_BYTES - len(payment(memo="ok")) + 1)
        assert (
            rejected(payments, raw).description
            == f"authorization_details must be at most {MAX_DETAILS_BYTES} bytes"
        )
        # Multi-byte characters count in bytes, not characters.
        wide = json.dumps([{"type": "payment", "memo": "é" * (MAX_DETAILS_BYTES // 2)}], ensure_ascii=False)
        assert len(wide) < MAX_DETAILS_BYTES < len(wide.encode())
        assert rejected(payments, wide).code == "authorization_details_too_large"

    def test_too_many_entries_are_refused(self, payments: PurposePolicy) -> None:
        raw = json.dumps([{"type": "report", "actions": ["read"]}] * (MAX_DETAILS_ENTRIES + 1))
        assert rejected(payments, raw).description == (
            f"authorization_details must have at most {MAX_DETAILS_ENTRIES} entries"
        )
        assert len(payments.validate_details(json.dumps([{"type": "report"}] * MAX_DETAILS_ENTRIES))) == 8

    def test_a_purpose_without_accepted_types_refuses_any_entry(self) -> None:
        plain = policy("")
        assert plain.validate_details(None) == []
        assert rejected(plain, '[{"type": "payment", "amount": 1}]').code == "unknown_detail_type"


class TestSchemaProblems:
    @pytest.mark.parametrize(
        ("field", "key", "message"),
        [
            (
                'type = { type = "string" }',
                "type",
                '"type" is the RFC 9396 type member and cannot be declared as a field',
            ),
            (
                '"bad-name" = { type = "string" }',
                "bad-name",
                "a field name must be an identifier (letters, digits, underscore) of at most 64",
            ),
            (
                'memo = { type = "string", minimum = 1 }',
                "memo",
                "minimum/maximum apply to number or integer fields, not string",
            ),
            (
                'amount = { type = "number", minimum = 5, maximum = 1 }',
                "amount",
                "minimum 5 is greater than maximum 1",
            ),
            (
                'amount = { type = "number", pattern = "^1$" }',
                "amount",
                "pattern/min_length apply to string or array fields, not number",
            ),
            (
                'memo = { type = "string", pattern = "(" }',
                "memo",
                "pattern '(' is not a valid regular expression "
                "(missing ), unterminated subpattern at position 0)",
            ),
            (
                'memo = { type = "string", min_length = 20, max_length = 10 }',
                "memo",
                "min_length 20 is greater than max_length 10",
            ),
            ('count = { type = "integer", enum = [1, 2.5] }', "count", "enum value 2.5 is not a integer"),
            ('actions = { type = "array", enum = ["read", 1] }', "actions", "enum value 1 is not a string"),
        ],
    )
    def test_bad_field_declarations_are_rejected(self, field: str, key: str, message: str) -> None:
        with pytest.raises(PolicyError) as caught:
            policy(f'[purposes."p".authorization_details.payment]\n{field}\n')
        assert caught.value.problems == [f'purposes."p".authorization_details.payment.{key}: {message}']

    def test_an_empty_type_is_rejected(self) -> None:
        with pytest.raises(PolicyError) as caught:
            policy('[purposes."p".authorization_details.payment]\n')
        assert caught.value.problems == [
            'purposes."p".authorization_details.payment: an accepted type must declare at least one field'
        ]
