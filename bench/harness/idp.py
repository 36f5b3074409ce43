"""A fake identity provider for the benches: a fresh real key pair, its JWKS, and distinct tokens.

Tokens are signed with pyca/cryptography directly (the header segment is fixed per key), so a pool
of tens of thousands of ES256 tokens takes a couple of seconds. Each token has its own `sub`, `jti`
and `iat`: nothing a server could cache by content is repeated within a pool.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.jwk import ECKey, RSAKey

SUBJECT_AUDIENCE = "purpose-exchange"


def b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


class FakeIdP:
    def __init__(self, issuer: str, alg: str = "ES256", audience: str = SUBJECT_AUDIENCE) -> None:
        if alg not in ("ES256", "RS256"):
            raise ValueError("ES256 or RS256")
        self.issuer, self.alg, self.audience = issuer, alg, audience
        self.private: Any
        self.jwk: ECKey | RSAKey
        if alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.jwk = ECKey.import_key(self.private)
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.jwk = RSAKey.import_key(self.private)
        self.kid = self.jwk.thumbprint()
        header = {"alg": alg, "typ": "JWT", "kid": self.kid}
        self._header_segment = b64(json.dumps(header, separators=(",", ":")).encode())

    def jwks(self) -> dict[str, Any]:
        public = self.jwk.as_dict(private=False)
        return {"keys": [{**public, "kid": self.kid, "alg": self.alg, "use": "sig"}]}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()))
        return path

    def sign(self, signing_input: bytes) -> bytes:
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return bytes(self.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256()))

    def token(self, sub: str, *, now: int | None = None, lifetime: int = 3600, **extra: Any) -> str:
        """An identity token: MFA done ten seconds ago, valid for `lifetime` seconds."""
        now = int(time.time()) if now is None else now
        claims = {
            "iss": self.issuer,
            "sub": sub,
            "aud": self.audience,
            "iat": now,
            "exp": now + lifetime,
            "auth_time": now - 10,
            "amr": ["pwd", "mfa"],
            "acr": "urn:acr:2fa",
            "jti": secrets.token_hex(12),
            **extra,
        }
        signing_input = self._header_segment + b"." + b64(json.dumps(claims, separators=(",", ":")).encode())
        return (signing_input + b"." + b64(self.sign(signing_input))).decode()

    def pool(self, n: int, *, lifetime: int = 3600) -> list[str]:
        """`n` distinct tokens for `n` distinct users."""
        now = int(time.time())
        return [self.token(f"user-{i:06d}", now=now, lifetime=lifetime) for i in range(n)]
