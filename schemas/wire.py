"""What crosses HTTP: the token request, its answers, and discovery metadata."""

from __future__ import annotations

import msgspec

from schemas.base import Base

GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
SUBJECT_TOKEN_TYPES = frozenset({TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT})
ISSUED_TOKEN_TYPES = frozenset({TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT})
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
    client_id: str | None = None
    client_secret: str | None = None
    client_assertion: str | None = None
    client_assertion_type: str | None = None

    def __repr__(self) -> str:  # tokens and secrets never reach a log line through repr
        shown = f"grant_type={self.grant_type!r}, scope={self.scope!r}, client_id={self.client_id!r}"
        return f"TokenRequest({shown})"


class TokenResponse(Base, frozen=True):
    access_token: str
    issued_token_type: str
    token_type: str
    expires_in: int
    scope: str

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
    token_endpoint_auth_signing_alg_values_supported: list[str] | None = None
    scopes_supported: list[str] | None = None
    response_types_supported: list[str] = msgspec.field(default_factory=list)
    authorization_details_types_supported: list[str] | None = None
    service_documentation: str | None = None
