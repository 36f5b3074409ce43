"""What crosses HTTP: the token request, its answers, and discovery metadata."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from schemas.base import Base

GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
SUBJECT_TOKEN_TYPES = frozenset({TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT})
ISSUED_TOKEN_TYPES = frozenset({TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT})
# draft-ietf-oauth-transaction-tokens-10 §16.1: the Txn-Token and the two subject token types it adds.
TOKEN_TYPE_TXN_TOKEN = "urn:ietf:params:oauth:token-type:txn_token"
TOKEN_TYPE_SELF_SIGNED = "urn:ietf:params:oauth:token-type:self_signed"
TOKEN_TYPE_UNSIGNED_JSON = "urn:ietf:params:oauth:token-type:unsigned_json"
TOKEN_TYPE_PREFIX = "urn:ietf:params:oauth:token-type:"
#: Every subject_token_type a Txn-Token request may name (draft §11.2); config names them by their last part.
TXN_SUBJECT_TOKEN_TYPES = SUBJECT_TOKEN_TYPES | {
    TOKEN_TYPE_SELF_SIGNED,
    TOKEN_TYPE_UNSIGNED_JSON,
    TOKEN_TYPE_TXN_TOKEN,
}
CLIENT_ASSERTION_TYPE_JWT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class TokenRequest(Base, frozen=True):
    """RFC 8693 §2.1 parameters, after form decoding (each at most once, RFC 6749 §3.2)."""

    grant_type: str | None = None
    subject_token: str | None = None
    subject_token_type: str | None = None
    actor_token: str | None = None
    actor_token_type: str | None = None
    scope: str | None = None
    audience: tuple[str, ...] = ()
    resource: tuple[str, ...] = ()
    requested_token_type: str | None = None
    authorization_details: str | None = None
    # draft-ietf-oauth-transaction-tokens-10 §11.1: JSON objects for a Txn-Token's rctx and tctx.
    request_context: str | None = None
    request_details: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    client_assertion: str | None = None
    client_assertion_type: str | None = None

    def __repr__(self) -> str:  # tokens and secrets never reach a log line through repr
        shown = f"grant_type={self.grant_type!r}, scope={self.scope!r}, client_id={self.client_id!r}"
        return f"TokenRequest({shown})"


class TokenResponse(Base, frozen=True, omit_defaults=True):
    access_token: str
    issued_token_type: str
    token_type: str
    expires_in: int
    scope: str
    # RFC 9396 §7: the granted authorization_details (absent when none were requested).
    authorization_details: list[dict[str, Any]] | None = None

    def __repr__(self) -> str:
        return f"TokenResponse(scope={self.scope!r}, expires_in={self.expires_in})"


class ErrorResponse(Base, frozen=True, omit_defaults=True):
    """RFC 6749 §5.2, plus `denial` (stable rule code) and RFC 9470 step-up hints."""

    error: str
    error_description: str | None = None
    denial: str | None = None
    acr_values: str | None = None
    max_age: int | None = None


class ServerMetadata(Base, frozen=True, omit_defaults=True):
    """RFC 8414 authorization server metadata."""

    issuer: str
    token_endpoint: str
    jwks_uri: str
    grant_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    # RFC 8414 §2 makes this REQUIRED; we have no authorization endpoint, so it is always sent, empty
    # (a required field: omit_defaults would drop an empty default).
    response_types_supported: list[str]
    token_endpoint_auth_signing_alg_values_supported: list[str] | None = None
    scopes_supported: list[str] | None = None
    authorization_details_types_supported: list[str] | None = None
    # Extensions (RFC 8414 §2 allows them): the RFC 8693 token types a request may name here.
    requested_token_types_supported: list[str] | None = None
    subject_token_types_supported: list[str] | None = None
    service_documentation: str | None = None


class _PublicKey(Base, frozen=True, tag_field="kty"):
    """A published signing key (RFC 7517): public members only, never `d` or other private parts."""

    kid: str
    alg: str
    use: Literal["sig"]


class ECPublicKey(_PublicKey, frozen=True, tag="EC"):
    crv: str
    x: str
    y: str


class RSAPublicKey(_PublicKey, frozen=True, tag="RSA"):
    n: str
    e: str


class OKPPublicKey(_PublicKey, frozen=True, tag="OKP"):
    crv: str
    x: str


class JWKSet(Base, frozen=True):
    """GET /.well-known/jwks.json (RFC 7517 §5)."""

    keys: list[ECPublicKey | RSAPublicKey | OKPPublicKey]


class Liveness(Base, frozen=True):
    """GET /healthz: the process answers."""

    status: Literal["ok"]


# The readiness body is meant to grow (more checks, more detail), so unlike the other wire types it
# does not forbid members it does not name: a probe reads `status` and may show the rest.
class HealthCheck(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One named dependency of readiness and its state."""

    name: str
    status: Literal["ok", "degraded", "down"]
    detail: str | None = None


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """GET /readyz: `ready` and `degraded` answer 200 (keep routing traffic here), `unavailable` 503;
    `checks` names each dependency checked and what is wrong with it."""

    status: Literal["ready", "degraded", "unavailable"]
    checks: list[HealthCheck] = msgspec.field(default_factory=list)
