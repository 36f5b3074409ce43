"""How the app proves who it is at the token endpoint (RFC 6749 §2.3, RFC 7523 `private_key_jwt`).

Each method turns (client_id, token endpoint, now) into the headers and form fields of one request.
They are called once per attempt, so a `private_key_jwt` assertion is built fresh every time (new
`jti`, new `iat`): the exchange accepts each assertion once. Secrets and keys stay inside these
objects; their `repr` never shows them.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from typing import Any, Final, Protocol
from urllib.parse import quote_plus

from joserfc import jwt
from joserfc.jwk import ECKey, JWKRegistry, Key, OKPKey, RSAKey

from exchange.verify.verifier import SUPPORTED_ALGORITHMS
from schemas.wire import CLIENT_ASSERTION_TYPE_JWT

Form = dict[str, str]
Headers = dict[str, str]

# The algorithm a key signs with unless told otherwise: the common, fully specified choice per type.
_EC_ALGORITHMS: Final = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
# RFC 7523 assertions are one-shot: a short life limits what a captured one is worth (the exchange
# refuses long-lived ones).
DEFAULT_ASSERTION_LIFETIME: Final = 60


class ClientAuth(Protocol):
    """One client authentication method."""

    method: str

    def apply(self, client_id: str, token_endpoint: str, now: float) -> tuple[Headers, Form]:
        """The headers and form fields that authenticate one request."""
        ...


class NoClientAuth:
    """`none`: a public client names itself with `client_id` only."""

    method = "none"

    def apply(self, client_id: str, token_endpoint: str, now: float) -> tuple[Headers, Form]:
        return {}, {"client_id": client_id}

    def __repr__(self) -> str:
        return "NoClientAuth()"


class ClientSecretBasic:
    """`client_secret_basic`: HTTP Basic with the client id and secret."""

    method = "client_secret_basic"

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("ClientSecretBasic needs a non-empty secret")
        self._secret = secret

    def apply(self, client_id: str, token_endpoint: str, now: float) -> tuple[Headers, Form]:
        # RFC 6749 §2.3.1: each half is form-urlencoded before base64, so a ':' or '+' in either
        # survives (servers decode with the form rules: '+' is a space, '%2B' a plus).
        pair = f"{quote_plus(client_id, safe='')}:{quote_plus(self._secret, safe='')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")}, {}

    def __repr__(self) -> str:
        return "ClientSecretBasic(secret=<redacted>)"


class ClientSecretPost:
    """`client_secret_post`: client id and secret as form fields (prefer Basic where you can)."""

    method = "client_secret_post"

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("ClientSecretPost needs a non-empty secret")
        self._secret = secret

    def apply(self, client_id: str, token_endpoint: str, now: float) -> tuple[Headers, Form]:
        return {}, {"client_id": client_id, "client_secret": self._secret}

    def __repr__(self) -> str:
        return "ClientSecretPost(secret=<redacted>)"


class PrivateKeyJWT:
    """`private_key_jwt` (RFC 7523 §2.2): a JWT signed with a private key the app holds, whose public
    half the exchange has in its JWKS for this client.

    `key` is a joserfc key or a private JWK as a dict; `alg` defaults by key type (ES256/384/512 by
    curve, RS256 for RSA, Ed25519 for OKP). The header's `kid` is the key's own, else its RFC 7638
    thumbprint (what a JWKS written from the public half names it).
    """

    method = "private_key_jwt"

    def __init__(
        self,
        key: Key | Mapping[str, Any],
        *,
        alg: str | None = None,
        lifetime: int = DEFAULT_ASSERTION_LIFETIME,
    ) -> None:
        imported = JWKRegistry.import_key(dict(key)) if isinstance(key, Mapping) else key
        if not isinstance(imported, ECKey | RSAKey | OKPKey) or not imported.is_private:
            raise ValueError("PrivateKeyJWT needs a private EC, RSA or OKP key")
        alg = alg or _default_alg(imported)
        # Asymmetric only: an app's assertion must never be a MAC anyone holding the "key" could forge.
        if alg not in SUPPORTED_ALGORITHMS:
            raise ValueError(f"PrivateKeyJWT: {alg!r} is not an asymmetric JWS algorithm")
        if not 1 <= lifetime <= 300:
            raise ValueError("PrivateKeyJWT lifetime must be 1 to 300 seconds")
        self._key = imported
        self._alg = alg
        self._lifetime = lifetime
        self._kid = imported.kid or imported.thumbprint()

    @property
    def kid(self) -> str:
        return self._kid

    def apply(self, client_id: str, token_endpoint: str, now: float) -> tuple[Headers, Form]:
        iat = int(now)
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": token_endpoint,
            "iat": iat,
            "exp": iat + self._lifetime,
            "jti": secrets.token_urlsafe(24),
        }
        header = {"alg": self._alg, "kid": self._kid, "typ": "JWT"}
        assertion = jwt.encode(header, claims, self._key, algorithms=[self._alg])
        return {}, {
            "client_id": client_id,
            "client_assertion_type": CLIENT_ASSERTION_TYPE_JWT,
            "client_assertion": assertion,
        }

    def __repr__(self) -> str:
        return f"PrivateKeyJWT(alg={self._alg!r}, kid={self._kid!r})"


def _default_alg(key: ECKey | RSAKey | OKPKey) -> str:
    if isinstance(key, RSAKey):
        return "RS256"
    if isinstance(key, OKPKey):
        if key.curve_name != "Ed25519":
            raise ValueError(f"PrivateKeyJWT: no default algorithm for OKP curve {key.curve_name}")
        return "Ed25519"
    alg = _EC_ALGORITHMS.get(key.curve_name)
    if alg is None:
        raise ValueError(f"PrivateKeyJWT: no default algorithm for EC curve {key.curve_name}")
    return alg
