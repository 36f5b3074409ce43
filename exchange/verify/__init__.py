"""Offline verification of purpose tokens for downstream services.

    verifier = PurposeTokenVerifier(issuer="https://exchange.example", audience="payments")
    claims = await verifier.averify(token, purpose="payments.approve")

This package imports joserfc, msgspec, httpx and cryptography only: never litestar, asyncpg or the
exchange server. `JWSVerifier` (exchange/verify/jws.py) is the one verification core every token kind
goes through; `key_source` the one factory for where keys come from. Framework glue lives in the
opt-in modules `exchange.verify.litestar` and `exchange.verify.asgi`.
"""

from __future__ import annotations

from exchange.verify.claims import VerifiedClaims
from exchange.verify.compact import JWSError
from exchange.verify.errors import REASONS, Reason, VerificationError
from exchange.verify.jwks import JWKSCache, JWKSError, KeySource, StaticJWKS, key_source, parse_jwks
from exchange.verify.jws import JWSVerifier, VerifiedJWS
from exchange.verify.replay import (
    FileReplayGuard,
    InMemoryReplayGuard,
    PostgresReplayGuard,
    ReplayGuard,
    SyncReplayGuard,
)
from exchange.verify.verifier import DEFAULT_ALGORITHMS, SUPPORTED_ALGORITHMS, PurposeTokenVerifier

__all__ = [
    "DEFAULT_ALGORITHMS",
    "REASONS",
    "SUPPORTED_ALGORITHMS",
    "FileReplayGuard",
    "InMemoryReplayGuard",
    "JWKSCache",
    "JWKSError",
    "JWSError",
    "JWSVerifier",
    "KeySource",
    "PostgresReplayGuard",
    "PurposeTokenVerifier",
    "Reason",
    "ReplayGuard",
    "StaticJWKS",
    "SyncReplayGuard",
    "VerificationError",
    "VerifiedClaims",
    "VerifiedJWS",
    "key_source",
    "parse_jwks",
]
