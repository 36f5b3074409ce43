"""A local identity provider for the README walkthrough and demos. Never for production.

Its private key sits in a 0600 file; the service trusts its public half when `[dev_issuer]` is set
and says so loudly at start-up. `exchange dev-token` mints identity tokens with it.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any, Final

import msgspec
from joserfc import jwt
from joserfc.jwk import ECKey

from schemas.config import DevIssuer, TrustedIssuer

ALG: Final = "ES256"


def load_or_create_key(path: str | Path) -> ECKey:
    path = Path(path)
    if not path.exists():
        key = ECKey.generate_key("P-256")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(msgspec.json.encode(key.as_dict(private=True)))
    return ECKey.import_key(msgspec.json.decode(path.read_bytes()))


def public_jwks(key: ECKey) -> dict[str, Any]:
    return {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint(), "alg": ALG, "use": "sig"}]}


def trusted_issuer(dev: DevIssuer) -> TrustedIssuer:
    # Its keys come from the key file's public half (see `public_jwks`), never from a JWKS file.
    return TrustedIssuer(
        issuer=dev.issuer, audiences=[dev.audience], algorithms=[ALG], require_at_jwt_typ=False
    )


def mint(
    dev: DevIssuer,
    *,
    sub: str,
    ttl: int = 600,
    amr: list[str] | None = None,
    acr: str | None = None,
    extra: dict[str, Any] | None = None,
    access_token: bool = False,
    now: float | None = None,
) -> str:
    """An identity token as a real provider would issue it (ID token by default, RFC 9068 AT if asked)."""
    key = load_or_create_key(dev.key_file)
    iat = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": dev.issuer,
        "sub": sub,
        "aud": dev.audience,
        "iat": iat,
        "exp": iat + ttl,
        "auth_time": iat,
        "jti": secrets.token_urlsafe(12),
    }
    if amr:
        claims["amr"] = amr
    if acr:
        claims["acr"] = acr
    claims.update(extra or {})
    header = {"alg": ALG, "kid": key.thumbprint(), "typ": "at+jwt" if access_token else "JWT"}
    return jwt.encode(header, claims, key, algorithms=[ALG])
