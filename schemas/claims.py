"""The purpose token's claims (RFC 9068 access-token profile plus RFC 8693 / 9396 members)."""

from __future__ import annotations

from typing import Any, Literal

from schemas.base import Base

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
