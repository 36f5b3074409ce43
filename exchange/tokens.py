"""Minting purpose tokens: RFC 9068 JWT access tokens signed with the active key.

Downscoping is structural: the claims are built from the purpose, the client and the verified subject
only; nothing from the request or the subject token is copied wholesale.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import msgspec

# JWSAlgModel is public in joserfc.jws, though missing from its __all__.
from joserfc.jws import JWSAlgModel, JWSRegistry  # type: ignore[attr-defined]

from exchange.keys import ActiveKey, KeyRing
from exchange.verify.compact import b64url_encode
from schemas.claims import PurposeClaims, SubjectId

_encode_claims = msgspec.json.Encoder().encode
# Carried over from the subject token only when present and well-typed (RFC 9068 §2.2.1).
_AUTH_CLAIMS = ("acr", "amr", "auth_time")


class Minter:
    def __init__(self, keyring: KeyRing, issuer: str) -> None:
        self._keyring = keyring
        self._issuer = issuer
        # The header segment and algorithm of the active key, rebuilt only when the key changes.
        self._prepared: tuple[ActiveKey, bytes, JWSAlgModel] | None = None

    def _prepare(self) -> tuple[ActiveKey, bytes, JWSAlgModel]:
        active = self._keyring.active
        prepared = self._prepared
        if prepared is None or prepared[0] is not active:
            header = b64url_encode(_encode_claims(active.header)) + b"."
            prepared = self._prepared = (active, header, JWSRegistry.algorithms[active.alg])
        return prepared

    def claims(
        self,
        *,
        subject: Mapping[str, Any],
        subject_issuer: str,
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
            sub_id=SubjectId(format="iss_sub", iss=subject_issuer, sub=subject["sub"]),
        )

    def sign(self, claims: PurposeClaims) -> str:
        """Compact JWS of the claims; joserfc's algorithm object makes the signature (raw r||s for EC)."""
        active, header, alg = self._prepare()
        signing_input = header + b64url_encode(_encode_claims(claims))
        return (signing_input + b"." + b64url_encode(alg.sign(signing_input, active.key))).decode("ascii")
