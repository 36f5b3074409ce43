"""The claims the exchange mints: the purpose token's (RFC 9068 access-token profile plus RFC 8693 /
9396 members) and the Txn-Token's (draft-ietf-oauth-transaction-tokens-10 §9)."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from schemas.base import Base, NumericDate

PURPOSE_TOKEN_TYP = "at+jwt"
# RFC 9068 §2.1 / RFC 7515 §4.1.9: "application/" may be omitted; compare lower-cased.
AT_JWT_TYPS = frozenset({"at+jwt", "application/at+jwt"})


class SubjectId(Base, frozen=True):
    """RFC 9493 `iss_sub` subject identifier: who the subject is, and at which identity provider.

    `sub` alone is only unique per issuer: alice of one identity provider is not alice of another.
    The purpose token's `iss` is the exchange, so the subject's own issuer travels here.
    """

    format: Literal["iss_sub"]
    iss: str
    sub: str


class PurposeClaims(Base, frozen=True, omit_defaults=True):
    iss: str
    sub: str
    aud: str
    exp: int
    iat: int
    jti: str
    client_id: str
    scope: str
    acr: str | None = None
    amr: list[str] | None = None
    auth_time: int | None = None
    authorization_details: list[dict[str, Any]] | None = None
    act: dict[str, Any] | None = None
    # The downstream verifier accepts a single_use token's jti once (replay guard).
    single_use: bool | None = None
    # The subject's issuer and sub (RFC 9493); always set by the exchange.
    sub_id: SubjectId | None = None


TXN_TOKEN_TYP: Final = "txntoken+jwt"
# Draft §9.1 / RFC 7515 §4.1.9: "application/" may be omitted; compare lower-cased.
TXN_TOKEN_TYPS: Final = frozenset({"txntoken+jwt", "application/txntoken+jwt"})
#: Separates the requesting workloads in `req_wl` (draft -08's convention for a replaced token's chain;
#: -10 keeps req_wl a string and leaves the chain's form to the TTS, §13.15). Workload ids never hold it.
WORKLOAD_SEPARATOR: Final = ","

_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]


class TxnClaims(Base, frozen=True, omit_defaults=True):
    """A Txn-Token's claims (draft §9.2), as the exchange mints them and as a verifier reads them: one
    definition for both, so no claim can be minted that verifiers would not understand (unknown claims
    are refused, as for purpose tokens).

    `sub` is unique within the trust domain (§9.2): the subject's namespace and its own `sub`, joined
    by a space (neither may contain one); `sub_id` carries the two parts. `req_wl` names the workload
    that requested this token; after replacements, every requester in order, comma-separated.
    """

    iss: _Text
    iat: NumericDate
    aud: _Text
    exp: NumericDate
    txn: _Text
    sub: _Text
    scope: _Text
    req_wl: _Text
    # Names this token (an original and each replacement share `txn`), for the audit trail.
    jti: _Text
    sub_id: SubjectId
    tctx: dict[str, Any] | None = None
    rctx: dict[str, Any] | None = None

    @property
    def requesting_workloads(self) -> tuple[str, ...]:
        """The call chain of requesters (draft §13.15), the original requester first."""
        return tuple(self.req_wl.split(WORKLOAD_SEPARATOR))

    @property
    def replacements(self) -> int:
        """How many times this transaction's Txn-Token was replaced to get this one."""
        return self.req_wl.count(WORKLOAD_SEPARATOR)

    @property
    def subject_issuer(self) -> str:
        """The namespace of the subject (its identity provider, or the workload that named it)."""
        return self.sub_id.iss

    @property
    def transaction_context(self) -> dict[str, Any]:
        """`tctx`, or {} when the token asserts none."""
        return self.tctx or {}

    @property
    def request_context(self) -> dict[str, Any]:
        """`rctx`, or {} when the token asserts none."""
        return self.rctx or {}

    def to_dict(self) -> dict[str, Any]:
        """The claims by wire name, absent ones left out."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


def txn_subject(namespace: str, sub: str) -> str:
    """The Txn-Token `sub` of `sub` in `namespace`: unique in the trust domain (draft §9.2, §11.3).

    Namespaces (issuer URLs, workload ids) never contain a space, so the first space splits it back.
    """
    return f"{namespace} {sub}"
