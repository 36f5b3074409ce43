"""Client authentication (RFC 6749 §2.3, RFC 7521, RFC 7523 private_key_jwt) and secret hashing.

Who is calling is decided by the credentials, never by a name the request merely states:
- a secret client (client_secret_basic or client_secret_post) authenticates with its secret, sent
  either way; Basic credentials are form-decoded (RFC 6749 §2.3.1), and because many stock clients
  send them raw, the raw spelling is accepted too when the two differ;
- a private_key_jwt client authenticates with an assertion that ITS registered keys verify, whose
  `iss` and `sub` are both its client_id (RFC 7523 §3). The key source is chosen from the client the
  assertion names and nothing else; `client_id` in the body is optional (RFC 7521 §4.2) and must
  name the same client when present;
- a public client ("none") names itself and proves nothing; it may not present a secret.

Secrets are stored as scrypt hashes. scrypt is deliberately slow, so it runs in a small thread pool,
never on the event loop, and a successful check is remembered for the process as a MAC (keyed
BLAKE2b) under a per-process random key (not a reusable hash of the secret): the hot path pays one
MAC, a wrong secret always pays full scrypt, and so does a secret for an unknown client (against a
dummy hash), so client ids cannot be told apart by timing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote_plus

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from exchange.errors import InvalidClient, InvalidRequest
from exchange.store.base import Store
from exchange.verify.compact import Compact, JWSError, split_compact
from exchange.verify.jwks import KeySource, key_source
from exchange.verify.jws import JWSVerifier
from exchange.verify.strictjson import AmbiguousJSON, decode_object, is_numeric_date
from schemas.algorithms import DEFAULT_ALGORITHMS
from schemas.config import Client
from schemas.wire import CLIENT_ASSERTION_TYPE_JWT, TokenRequest

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
#: What a private_key_jwt client may sign its assertions with (asymmetric only; advertised in metadata).
ASSERTION_ALGORITHMS: Final = DEFAULT_ALGORITHMS
#: Clock skew allowed on an assertion's exp, nbf and iat (seconds).
ASSERTION_LEEWAY: Final = 30
# An assertion is a plain JWT, or says what it is (draft-ietf-oauth-rfc7523bis); never an access token.
_ASSERTION_TYPS: Final = (
    None,
    "jwt",
    "application/jwt",
    "client-authentication+jwt",
    "application/client-authentication+jwt",
)
_SECRET_METHODS: Final = frozenset({"client_secret_basic", "client_secret_post"})
_FAILED: Final = "client authentication failed"


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


# What an unknown client's secret is checked against: same parameters, so the same cost.
_DUMMY_HASH: Final = hash_secret(base64.b64encode(os.urandom(24)).decode())


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the request presented, before any check.

    `alternatives`: (client_id, secret) spellings to try, decoded first (only Basic has two). `basic`:
    the Authorization header was used (the 401 then carries a Basic challenge).
    """

    client_id: str | None
    secret: str | None
    method: str
    basic: bool = False
    alternatives: tuple[tuple[str, str], ...] = ()


def presented_credentials(request: TokenRequest, authorization: str | None) -> Credentials:
    """Find the one authentication method the request uses (RFC 6749 §2.3: never more than one)."""
    methods = []
    pairs: list[tuple[str, str]] = []
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise InvalidClient(_FAILED, basic=True, reason="unsupported_authorization_scheme")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidClient(_FAILED, basic=True, reason="malformed_basic_credentials") from None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            raise InvalidClient(_FAILED, basic=True, reason="malformed_basic_credentials")
        # RFC 6749 §2.3.1: both halves are form-urlencoded before base64; many clients skip that.
        pairs.append((unquote_plus(user), unquote_plus(password)))
        if pairs[0] != (user, password):
            pairs.append((user, password))
        methods.append("client_secret_basic")
    if request.client_secret is not None:
        methods.append("client_secret_post")
    if request.client_assertion is not None or request.client_assertion_type is not None:
        methods.append("private_key_jwt")
    if len(methods) > 1:
        raise InvalidRequest("use exactly one client authentication method")
    if pairs:
        if request.client_id is not None:
            # client_id beside Basic must name the client Basic names (in either spelling).
            pairs = [pair for pair in pairs if pair[0] == request.client_id]
            if not pairs:
                raise InvalidClient(_FAILED, basic=True, reason="client_id_mismatch")
        return Credentials(pairs[0][0], pairs[0][1], "client_secret_basic", True, tuple(pairs))
    if methods == ["client_secret_post"]:
        secret = request.client_secret or ""
        return Credentials(
            request.client_id, secret, "client_secret_post", alternatives=((request.client_id or "", secret),)
        )
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
        max_assertion_lifetime: int = 3600,
        previous: ClientAuthenticator | None = None,
    ) -> None:
        self._clients = {c.client_id: c for c in clients}
        # A reload keeps the remembered secret checks: each tag binds the stored hash, so a client whose
        # secret changed is checked again, and the others do not all pay scrypt at once.
        self._pepper: bytes = os.urandom(32) if previous is None else previous._pepper
        self._verified: dict[str, bytes] = {} if previous is None else previous._verified
        self._store = store
        self._audiences = frozenset({token_endpoint, issuer})
        self._max_lifetime = max_assertion_lifetime
        self._max_bytes = max_token_bytes
        # Each client's own registered keys, one source per client (a Txn-Token workload's self-signed
        # subjects are checked with them too, exchange/txn.py); only a private_key_jwt client's keys can
        # authenticate it. A reload keeps a jwks_uri's fetched cache.
        self._registered: dict[str, KeySource] = {
            c.client_id: (previous._reusable_source(c) if previous is not None else None)
            or key_source(jwks_file=c.jwks_file, jwks_uri=c.jwks_uri)
            for c in clients
            if c.jwks_file is not None or c.jwks_uri is not None
        }
        self._keys: dict[str, KeySource] = {
            c.client_id: self._registered[c.client_id] for c in clients if c.auth_method == "private_key_jwt"
        }
        # One header policy for every assertion (the key is bound per client, after the header check).
        self._jws = JWSVerifier(
            algorithms=ASSERTION_ALGORITHMS, typ=_ASSERTION_TYPS, require_kid=False, max_bytes=max_token_bytes
        )
        # scrypt is CPU-bound and ~50 ms: two threads (the machines have two cores) keep it off the loop.
        self._pool: ThreadPoolExecutor = (
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="scrypt")
            if previous is None
            else previous._pool
        )

    def get(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    def key_sources(self) -> dict[str, KeySource]:
        """Each private_key_jwt client's key source (for readiness and metrics)."""
        return dict(self._keys)

    def registered_keys(self, client_id: str) -> KeySource | None:
        """The keys registered for this client (its jwks_file or jwks_uri), or None."""
        return self._registered.get(client_id)

    def _reusable_source(self, client: Client) -> KeySource | None:
        """The client's fetched-keys cache, if its jwks_uri did not change (a file is read again)."""
        old = self._clients.get(client.client_id)
        if old is None or client.jwks_uri is None or old.jwks_uri != client.jwks_uri:
            return None
        return self._registered.get(client.client_id)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def authenticate(
        self, creds: Credentials, request: TokenRequest, now: float | None = None
    ) -> Client:
        def fail(reason: str) -> InvalidClient:
            return InvalidClient(_FAILED, basic=creds.basic, reason=reason)

        if creds.method == "private_key_jwt":
            return await self._check_assertion(creds, request, time.time() if now is None else now, fail)
        if creds.method in _SECRET_METHODS:
            return await self._check_secret(creds, fail)
        client = self._clients.get(creds.client_id or "")
        if client is None:
            raise fail("unknown_client")
        if client.auth_method != "none":
            raise fail(f"expected {client.auth_method}, got none")
        return client

    async def _check_secret(self, creds: Credentials, fail: Any) -> Client:
        found = False
        for client_id, secret in creds.alternatives:
            client = self._clients.get(client_id)
            if client is None or client.auth_method not in _SECRET_METHODS:
                continue
            found = True
            if secret and await self._secret_matches(client, secret):
                return client
        if not found:
            # Unknown client, or one that has no secret: pay what a wrong secret costs, then refuse.
            await asyncio.get_running_loop().run_in_executor(
                self._pool, verify_secret, creds.secret or "", _DUMMY_HASH
            )
            known = self._clients.get(creds.client_id or "")
            raise fail("unknown_client" if known is None else f"expected {known.auth_method}, got a secret")
        raise fail("bad_secret")

    async def _secret_matches(self, client: Client, secret: str) -> bool:
        stored = client.secret_hash or ""
        # Keyed BLAKE2b (RFC 7693: keyed BLAKE2 is a MAC by itself, no HMAC construction) under the
        # per-process key: ~1 µs, against ~4-6 µs for OpenSSL 3's one-shot HMAC-SHA256, which fetches
        # its algorithm on every call (3% of an exchange's CPU). Compared in constant time as before.
        tag = hashlib.blake2b(
            f"{client.client_id}\0{secret}\0{stored}".encode(), key=self._pepper, digest_size=32
        ).digest()
        known = self._verified.get(client.client_id)
        if known is not None and hmac.compare_digest(known, tag):
            return True
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(self._pool, verify_secret, secret, stored):
            self._verified[client.client_id] = tag
            return True
        return False

    async def _check_assertion(
        self, creds: Credentials, request: TokenRequest, now: float, fail: Any
    ) -> Client:
        if request.client_assertion_type != CLIENT_ASSERTION_TYPE_JWT or not request.client_assertion:
            raise fail("bad_client_assertion_type")
        try:
            parts: Compact = split_compact(request.client_assertion, self._max_bytes)
            # Read before the signature only to learn which client's keys may check it.
            claims = decode_object(parts.payload)
        except JWSError as exc:
            raise fail(f"client_assertion:{exc.problem}") from None
        except AmbiguousJSON as exc:
            raise fail("client_assertion:" + ("duplicate_member" if exc.duplicate else "malformed")) from None
        iss, sub = claims.get("iss"), claims.get("sub")
        if not isinstance(sub, str) or not sub or iss != sub:
            raise fail("client_assertion:iss_sub_mismatch")
        if creds.client_id is not None and creds.client_id != sub:
            raise fail("client_assertion:client_id_mismatch")
        client = self._clients.get(sub)
        keys = self._keys.get(sub)
        if client is None or keys is None:
            raise fail(
                "unknown_client" if client is None else f"expected {client.auth_method}, got an assertion"
            )
        try:
            await self._jws.verify(parts, keys)
        except JWSError as exc:
            raise fail(f"client_assertion:{exc.problem}") from None
        exp = self._check_assertion_claims(claims, now, fail)
        if not await self._store.consume_jti(
            f"client:{client.client_id}", claims["jti"], exp + ASSERTION_LEEWAY
        ):
            raise fail("client_assertion:replayed")
        return client

    def _check_assertion_claims(self, claims: dict[str, Any], now: float, fail: Any) -> float:
        """RFC 7523 §3: audience, time window, lifetime cap and a jti. Returns exp."""
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(isinstance(a, str) and a in self._audiences for a in auds):
            raise fail("client_assertion:wrong_audience")
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        if not is_numeric_date(exp):
            raise fail("client_assertion:missing_exp")
        if any(v is not None and not is_numeric_date(v) for v in (nbf, iat)):
            raise fail("client_assertion:bad_numeric_date")
        if now >= exp + ASSERTION_LEEWAY:
            raise fail("client_assertion:expired")
        if nbf is not None and now < nbf - ASSERTION_LEEWAY:
            raise fail("client_assertion:not_yet_valid")
        if iat is not None and iat > now + ASSERTION_LEEWAY:
            raise fail("client_assertion:issued_in_future")
        if exp - (iat if iat is not None else now) > self._max_lifetime:
            raise fail("client_assertion:lifetime_too_long")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise fail("client_assertion:missing_jti")
        return float(exp)
