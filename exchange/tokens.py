"""Minting purpose tokens: RFC 9068 JWT access tokens signed with the active key.

Downscoping is structural: the claims are built from the purpose, the client and the verified subject
only; nothing from the request or the subject token is copied wholesale.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import msgspec
from joserfc import jws
from joserfc.jws import JWSRegistry

from exchange.keys import KeyRing
from schemas.claims import PurposeClaims

_encode_claims = msgspec.json.Encoder().encode
# Carried over from the subject token only when present and well-typed (RFC 9068 §2.2.1).
_AUTH_CLAIMS = ("acr", "amr", "auth_time")


class Minter:
    def __init__(self, keyring: KeyRing, issuer: str) -> None:
        self._keyring = keyring
        self._issuer = issuer
        self._registries: dict[str, JWSRegistry] = {}

    def _registry(self, alg: str) -> JWSRegistry:
        registry = self._registries.get(alg)
        if registry is None:
            registry = self._registries[alg] = JWSRegistry(algorithms=[alg])
        return registry

    def claims(
        self,
        *,
        subject: Mapping[str, Any],
        audience: str,
        client_id: str,
        purpose: str,
        ttl: int,
        now: float,
        details: list[dict[str, Any]] | None = None,
        act: dict[str, Any] | None = None,
        single_use: bool = False,
    ) -> PurposeClaims:
        """The claims for one purpose token; lifetime is the ttl but never past the subject's exp."""
        iat = int(now)
        exp = min(iat + ttl, int(subject["exp"]))
        acr, amr, auth_time = (subject.get(name) for name in _AUTH_CLAIMS)
        return PurposeClaims(
            iss=self._issuer,
            sub=subject["sub"],
            aud=audience,
            exp=exp,
            iat=iat,
            jti=secrets.token_urlsafe(18),
            client_id=client_id,
            scope=purpose,
            acr=acr if isinstance(acr, str) else None,
            amr=[m for m in amr if isinstance(m, str)] if isinstance(amr, list) else None,
            auth_time=auth_time if isinstance(auth_time, int) and not isinstance(auth_time, bool) else None,
            authorization_details=details or None,
            act=act,
            single_use=True if single_use else None,
        )

    def sign(self, claims: PurposeClaims) -> str:
        active = self._keyring.active
        return jws.serialize_compact(
            active.header, _encode_claims(claims), active.key, registry=self._registry(active.alg)
        )
