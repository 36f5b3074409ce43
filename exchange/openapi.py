"""The OpenAPI 3.1 document of the service's HTTP face, served at GET /openapi.json.

Every schema in it is generated from the msgspec Structs in `schemas/wire.py` (msgspec emits JSON
Schema 2020-12, which OpenAPI 3.1 uses as is), so the document cannot drift from what the handlers
decode and encode; only the paths, status codes and media types are written here. The token request
is the one reshaping: a form has no `null`, so its optional fields are plain strings that may be left
out, and `audience` / `resource` are repeated fields (RFC 8693 §2.1).

`/metrics` is not described here: it is Prometheus' text format, not JSON (docs/OPERATIONS.md).
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.config import Settings
from schemas.wire import (
    CLIENT_ASSERTION_TYPE_JWT,
    GRANT_TOKEN_EXCHANGE,
    ISSUED_TOKEN_TYPES,
    SUBJECT_TOKEN_TYPES,
    TOKEN_TYPE_TXN_TOKEN,
    TXN_SUBJECT_TOKEN_TYPES,
    ErrorResponse,
    JWKSet,
    Liveness,
    Readiness,
    ServerMetadata,
    TokenRequest,
    TokenResponse,
)

_REF = "#/components/schemas/{name}"
_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _json(
    name: str, description: str, *, media: str = _JSON, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {media: {"schema": _ref(name)}}}
    if headers:
        answer["headers"] = headers
    return answer


# What RFC 8693 §2.1 and this service require of a valid request, from the constants the exchange
# checks against. The Struct keeps every field optional so that a missing one is answered with its own
# RFC 6749 error rather than a decoding failure; the document states what a valid request holds.
_REQUIRED = ["grant_type", "subject_token", "subject_token_type", "scope"]
_VALUES = {
    "grant_type": [GRANT_TOKEN_EXCHANGE],
    # With [txn_tokens] configured, the Txn-Token profile's types too (draft-ietf-oauth-transaction-
    # tokens-10 §11.1, §11.2); without, a request naming them is refused as unsupported.
    "subject_token_type": sorted(TXN_SUBJECT_TOKEN_TYPES),
    "actor_token_type": sorted(SUBJECT_TOKEN_TYPES),
    "requested_token_type": sorted(ISSUED_TOKEN_TYPES | {TOKEN_TYPE_TXN_TOKEN}),
    "client_assertion_type": [CLIENT_ASSERTION_TYPE_JWT],
}


def _form(schema: dict[str, Any]) -> dict[str, Any]:
    """The token request's schema as a form: `anyOf [X, null]` becomes X, defaults go, and the
    required parameters and their allowed values are stated."""
    properties = {}
    for name, prop in schema["properties"].items():
        prop = {k: v for k, v in prop.items() if k != "default"}
        variants = [v for v in prop.pop("anyOf", []) if v != {"type": "null"}]
        if len(variants) == 1:
            prop.update(variants[0])
        if name in _VALUES:
            prop["enum"] = _VALUES[name]
        elif prop.get("type") == "string":
            prop["minLength"] = 1  # an empty value is the same as an absent one (parse_form)
        properties[name] = prop
    # Unknown parameters are ignored, not refused (RFC 6749 §3.2): a form may carry others.
    rest = {k: v for k, v in schema.items() if k not in {"additionalProperties", "required"}}
    return {**rest, "properties": properties, "required": _REQUIRED}


_NO_STORE = {"Cache-Control": {"schema": {"type": "string", "const": "no-store"}}}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
}


def document(settings: Settings) -> dict[str, Any]:
    """The whole document for this deployment (its issuer is the server URL)."""
    _, components = msgspec.json.schema_components(
        [TokenRequest, TokenResponse, ErrorResponse, ServerMetadata, JWKSet, Liveness, Readiness],
        ref_template=_REF,
    )
    components["TokenRequest"] = _form(components["TokenRequest"])
    error = "ErrorResponse"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Purpose Exchange",
            "version": "1",
            "description": "RFC 8693 token exchange: purpose-bound, short-lived, audience-restricted tokens.",
        },
        "servers": [{"url": settings.issuer}],
        "paths": {
            "/token": {
                "post": {
                    "summary": "Exchange an identity token for a purpose token (RFC 8693 §2)",
                    "operationId": "token",
                    "security": [{}, {"clientSecretBasic": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/x-www-form-urlencoded": {
                                "schema": _ref("TokenRequest"),
                                "encoding": {
                                    "audience": {"style": "form", "explode": True},
                                    "resource": {"style": "form", "explode": True},
                                },
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            "TokenResponse",
                            "The purpose token or Txn-Token (RFC 8693 §2.2.1).",
                            headers=_NO_STORE,
                        ),
                        "400": _json(
                            error, "Refused (RFC 6749 §5.2, RFC 8693 §2.2.2); `denial` names a rule."
                        ),
                        "401": _json(error, "Client authentication failed (`invalid_client`)."),
                        "429": _json(
                            error, "A rate limit was reached (`denial`: rate_limited).", headers=_RETRY_AFTER
                        ),
                        "503": _json(
                            error,
                            "Temporarily unavailable (the store, or a trusted issuer's keys); retry.",
                            headers=_RETRY_AFTER,
                        ),
                    },
                }
            },
            "/.well-known/jwks.json": {
                "get": {
                    "summary": "The public signing keys (RFC 7517)",
                    "operationId": "jwks",
                    "responses": {
                        "200": _json("JWKSet", "Published keys.", media="application/jwk-set+json")
                    },
                }
            },
            "/.well-known/oauth-authorization-server": {
                "get": {
                    "summary": "Authorization server metadata (RFC 8414)",
                    "operationId": "metadata",
                    "responses": {"200": _json("ServerMetadata", "The metadata.")},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness: the process answers",
                    "operationId": "healthz",
                    "responses": {"200": _json("Liveness", "Alive.")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: whether this replica can exchange tokens, naming each check",
                    "operationId": "readyz",
                    "responses": {
                        "200": _json("Readiness", "`ready`, or `degraded` (still serving; see `checks`)."),
                        "503": _json(
                            "Readiness", "`unavailable`: no exchange can succeed here.", headers=_RETRY_AFTER
                        ),
                    },
                }
            },
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "clientSecretBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "client_secret_basic (RFC 6749 §2.3.1); the other client authentication "
                    "methods travel in the form (client_secret_post, private_key_jwt per RFC 7523).",
                }
            },
        },
    }
