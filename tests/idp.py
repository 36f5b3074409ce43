"""A fake identity provider that is real where it matters: a real key pair, a real JWKS, real JWTs."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import msgspec
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey, import_key

FIXTURES = Path(__file__).parent / "fixtures"


def load_key(name: str) -> Any:
    return import_key(msgspec.json.decode((FIXTURES / f"{name}.jwk.json").read_bytes()))


class FakeIdP:
    def __init__(self, issuer: str, key_name: str, alg: str, audience: str = "purpose-exchange") -> None:
        self.issuer = issuer
        self.key: ECKey | RSAKey = load_key(key_name)
        self.alg = alg
        self.kid = self.key.thumbprint()
        self.audience = audience

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**self.key.as_dict(private=False), "kid": self.kid, "alg": self.alg, "use": "sig"}]}

    def write_jwks(self, path: Path) -> Path:
        path.write_bytes(msgspec.json.encode(self.jwks()))
        return path

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "alice",
            "aud": self.audience,
            "iat": now,
            "exp": now + 300,
            "auth_time": now - 10,
            "amr": ["pwd", "mfa"],
            "acr": "urn:acr:2fa",
            "jti": secrets.token_hex(8),
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def token(
        self,
        *,
        header: dict[str, Any] | None = None,
        key: Any = None,
        alg: str | None = None,
        typ: str | None = "JWT",
        **claims: Any,
    ) -> str:
        alg = alg or self.alg
        h: dict[str, Any] = {"alg": alg, "kid": self.kid}
        if typ is not None:
            h["typ"] = typ
        h.update(header or {})
        payload = msgspec.json.encode(self.claims(**claims))
        return jws.serialize_compact(h, payload, key or self.key, algorithms=[alg])
