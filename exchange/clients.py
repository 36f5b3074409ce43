"""Client authentication (RFC 6749 §2.3, RFC 7523 private_key_jwt) and secret hashing.

Secrets are stored as scrypt hashes. scrypt is deliberately slow, so a successful check is remembered
for the process as an HMAC under a per-process random key (not a reusable hash of the secret): the
hot path pays one HMAC, a wrong secret always pays full scrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from exchange.errors import InvalidClient, InvalidRequest, SubjectTokenInvalid
from exchange.store.base import Store
from exchange.trust import SubjectTrust, key_source
from schemas.config import Client, SubjectAlgorithm, TrustedIssuer
from schemas.wire import CLIENT_ASSERTION_TYPE_JWT, TOKEN_TYPE_JWT, TokenRequest

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
# What a private_key_jwt client may sign its assertions with (asymmetric only; advertised in metadata).
ASSERTION_ALGORITHMS: tuple[SubjectAlgorithm, ...] = ("ES256", "Ed25519", "EdDSA", "RS256", "PS256")
# RFC 7523 assertions are one-shot and short-lived; anything claiming a longer life is refused.
MAX_ASSERTION_LIFETIME = 300


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str) -> str:
    """`scrypt$N$r$p$salt$hash` for a client secret; what `exchange clients hash-secret` prints."""
    salt = os.urandom(16)
    digest = Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P).derive(secret.encode())
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        Scrypt(salt=_unb64(salt), length=32, n=int(n), r=int(r), p=int(p)).verify(
            secret.encode(), _unb64(digest)
        )
        return True
    except (InvalidKey, ValueError, binascii.Error):
        return False


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the request presented, before any check."""

    client_id: str | None
    secret: str | None
    method: str


def presented_credentials(request: TokenRequest, authorization: str | None) -> Credentials:
    """Find the one authentication method the request uses (RFC 6749 §2.3: never more than one)."""
    methods = []
    basic_id = basic_secret = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise InvalidClient("unsupported Authorization scheme")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidClient("malformed Basic credentials") from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise InvalidClient("malformed Basic credentials")
        # RFC 6749 §2.3.1: both halves are form-urlencoded before base64.
        basic_id, basic_secret = unquote_plus(user), unquote_plus(password)
        methods.append("client_secret_basic")
    if request.client_secret is not None:
        methods.append("client_secret_post")
    if request.client_assertion is not None or request.client_assertion_type is not None:
        methods.append("private_key_jwt")
    if len(methods) > 1:
        raise InvalidRequest("use exactly one client authentication method")
    if basic_id is not None:
        if request.client_id is not None and request.client_id != basic_id:
            raise InvalidRequest("client_id does not match the Authorization header")
        return Credentials(basic_id, basic_secret, "client_secret_basic")
    if methods == ["client_secret_post"]:
        return Credentials(request.client_id, request.client_secret, "client_secret_post")
    if methods == ["private_key_jwt"]:
        return Credentials(request.client_id, request.client_assertion, "private_key_jwt")
    return Credentials(request.client_id, None, "none")


class ClientAuthenticator:
    """Knows every configured client; answers who is calling, or raises invalid_client."""

    def __init__(
        self,
        clients: list[Client],
        *,
        token_endpoint: str,
        issuer: str,
        store: Store,
        max_token_bytes: int = 8192,
    ) -> None:
        self._clients = {c.client_id: c for c in clients}
        self._pepper = os.urandom(32)
        self._verified: dict[str, bytes] = {}
        self._store = store
        self._audiences = [token_endpoint, issuer]
        # Each private_key_jwt client is its own "issuer" of assertions (iss = sub = client_id), so
        # assertions get exactly the checks subject tokens get.
        assertion_issuers = [
            TrustedIssuer(
                issuer=c.client_id,
                audiences=[token_endpoint, issuer],
                leeway=30,
                algorithms=list(ASSERTION_ALGORITHMS),
                require_at_jwt_typ=False,
                jwks_file=c.jwks_file,
                jwks_uri=c.jwks_uri,
            )
            for c in clients
            if c.auth_method == "private_key_jwt"
        ]
        self._assertions = SubjectTrust(
            [(t, key_source(t)) for t in assertion_issuers], max_token_bytes=max_token_bytes
        )

    def get(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    async def authenticate(
        self, creds: Credentials, request: TokenRequest, now: float | None = None
    ) -> Client:
        client = self._clients.get(creds.client_id or "")
        if client is None:
            raise InvalidClient("client authentication failed", reason="unknown_client")
        if client.auth_method != creds.method:
            raise InvalidClient(
                "client authentication failed", reason=f"expected {client.auth_method}, got {creds.method}"
            )
        if creds.method in {"client_secret_basic", "client_secret_post"}:
            if not creds.secret or not self._check_secret(client, creds.secret):
                raise InvalidClient("client authentication failed", reason="bad_secret")
        elif creds.method == "private_key_jwt":
            await self._check_assertion(client, request, now)
        return client

    def _check_secret(self, client: Client, secret: str) -> bool:
        stored = client.secret_hash or ""
        tag = hmac.new(
            self._pepper, f"{client.client_id}\0{secret}\0{stored}".encode(), hashlib.sha256
        ).digest()
        known = self._verified.get(client.client_id)
        if known is not None and hmac.compare_digest(known, tag):
            return True
        if verify_secret(secret, stored):
            self._verified[client.client_id] = tag
            return True
        return False

    async def _check_assertion(self, client: Client, request: TokenRequest, now: float | None) -> None:
        if request.client_assertion_type != CLIENT_ASSERTION_TYPE_JWT or not request.client_assertion:
            raise InvalidClient("client authentication failed", reason="bad_client_assertion_type")
        try:
            verified = await self._assertions.validate(
                request.client_assertion, TOKEN_TYPE_JWT, which="client_assertion", now=now
            )
        except SubjectTokenInvalid as exc:
            raise InvalidClient("client authentication failed", reason=exc.reason) from None
        # The keys were those of the assertion's `iss`: it is only this client's proof when that issuer
        # is this client. Without this check any private_key_jwt client could sign as another.
        if verified.issuer != client.client_id:
            raise InvalidClient("client authentication failed", reason="client_assertion:wrong_issuer")
        claims: Any = verified.claims
        now = time.time() if now is None else now
        jti = claims.get("jti")
        if claims.get("sub") != client.client_id or not isinstance(jti, str) or not jti:
            raise InvalidClient("client authentication failed", reason="client_assertion:bad_sub_or_jti")
        if claims["exp"] - claims.get("iat", now) > MAX_ASSERTION_LIFETIME:
            raise InvalidClient("client authentication failed", reason="client_assertion:lifetime_too_long")
        if not await self._store.consume_jti(f"client:{client.client_id}", jti, float(claims["exp"]) + 60):
            raise InvalidClient("client authentication failed", reason="client_assertion:replayed")
