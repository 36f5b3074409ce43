"""`PurposeTokenVerifier`: the offline check a downstream service runs on every purpose token.

Order of checks, cheapest and least trusting first: size cap and serialisation, header (forbidden
members, algorithm allow-list, `typ`, `kid`), key lookup by kid, signature, then the claims (issuer,
audience, time window, lifetime, purpose), then the replay guard for single-use tokens. Nothing in the
payload is looked at before the signature is good.

Everything that can be built once is built once: the algorithm models for the allow-list (joserfc's
JWSAlgModel objects, which do the signature check), the decoders (module scope), and a small memo of
header segments already checked. Per call, a cached-key verify is one split, two strict base64url
decodes, one dict lookup for the header, the signature check, one msgspec decode and a handful of
comparisons.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

import msgspec
from joserfc.errors import JoseError
from joserfc.jwk import Key

# JWSAlgModel is public in joserfc.jws, though missing from its __all__.
from joserfc.jws import JWSAlgModel, JWSRegistry  # type: ignore[attr-defined]

from exchange.verify.claims import CLAIMS_DECODER, VerifiedClaims
from exchange.verify.compact import CompactError, decode_header, split_compact
from exchange.verify.errors import VerificationError
from exchange.verify.jwks import JWKSCache, KeySource, StaticJWKS
from exchange.verify.replay import InMemoryReplayGuard, ReplayGuard, SyncReplayGuard
from schemas.claims import AT_JWT_TYPS

#: What the exchange signs with ("EdDSA" is the pre-RFC 9864 name some libraries still emit).
DEFAULT_ALGORITHMS: Final = ("ES256", "Ed25519", "EdDSA", "RS256", "PS256")
#: Asymmetric algorithms a verifier may be configured with. HS* and "none" are never among them: a
#: verifier holding only public keys must not accept a MAC made with a public key as its secret.
SUPPORTED_ALGORITHMS: Final = frozenset(
    {"ES256", "ES384", "ES512", "Ed25519", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
DEFAULT_MAX_TOKEN_BYTES: Final = 8192
DEFAULT_LEEWAY: Final = 10
DEFAULT_MAX_LIFETIME: Final = 900
# Distinct headers remembered: one per (alg, kid) in practice, so a handful; the bound only stops a
# stream of junk headers from growing the memo.
_HEADER_MEMO_SIZE: Final = 64


class PurposeTokenVerifier:
    """Verifies purpose tokens for one audience from one issuer.

    Keys: `jwks_uri` (fetched and cached), `jwks` (a JWKS dict, or any KeySource such as StaticJWKS or
    a shared JWKSCache), or neither: then `{issuer}/.well-known/jwks.json`. `clock` returns epoch
    seconds; `now=` on a call overrides it. `replay_guard` defaults to an in-memory guard for this
    process; pass a PostgresReplayGuard when several replicas serve the same audience.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_uri: str | None = None,
        jwks: KeySource | Mapping[str, Any] | None = None,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        leeway: int = DEFAULT_LEEWAY,
        max_lifetime: int = DEFAULT_MAX_LIFETIME,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        replay_guard: ReplayGuard | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("PurposeTokenVerifier needs a non-empty issuer and audience")
        if isinstance(algorithms, str):
            raise TypeError("algorithms is a collection of names, e.g. ['ES256']")
        unsupported = set(algorithms) - SUPPORTED_ALGORITHMS
        if unsupported or not algorithms:
            raise ValueError(
                f"unsupported algorithms {sorted(unsupported)}; choose from {sorted(SUPPORTED_ALGORITHMS)}"
            )
        if not 0 <= leeway <= 120:
            raise ValueError("leeway must be between 0 and 120 seconds")
        if max_lifetime <= 0 or max_token_bytes < 256:
            raise ValueError("max_lifetime must be positive and max_token_bytes at least 256")
        if jwks is not None and jwks_uri is not None:
            raise ValueError("pass jwks_uri or jwks, not both")

        self.issuer = issuer
        self.audience = audience
        if jwks is None:
            self.keys: KeySource = JWKSCache(jwks_uri or issuer.rstrip("/") + "/.well-known/jwks.json")
        elif isinstance(jwks, Mapping):
            self.keys = StaticJWKS(jwks)
        else:
            self.keys = jwks
        # Looked up once from the class-level table rather than via get_alg(): get_alg re-checks the
        # allow-list and warns about EdDSA on every call. A joserfc older than RFC 9864 support lacks
        # "Ed25519": the default list then goes without it, an explicit request for it is an error.
        known = JWSRegistry.algorithms
        missing = [name for name in algorithms if name not in known]
        if missing and algorithms is not DEFAULT_ALGORITHMS:
            raise ValueError(f"this joserfc does not implement {missing}")
        self._algorithms: dict[str, JWSAlgModel] = {name: known[name] for name in algorithms if name in known}
        # Header segment -> (algorithm, kid), for headers that passed every header check. Tokens from
        # one issuer key share one header byte for byte, so the steady state skips the header parse.
        self._headers: dict[bytes, tuple[JWSAlgModel, str]] = {}
        self._leeway = leeway
        self._max_lifetime = max_lifetime
        self._max_token_bytes = max_token_bytes
        self._clock = clock
        self.replay_guard: ReplayGuard = replay_guard if replay_guard is not None else InMemoryReplayGuard()
        self._sync_guard: SyncReplayGuard | None = (
            self.replay_guard if isinstance(self.replay_guard, SyncReplayGuard) else None
        )

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self._algorithms)

    def verify(
        self, token: str | bytes, *, purpose: str | None = None, now: float | None = None
    ) -> VerifiedClaims:
        """Verify synchronously, with keys already cached (StaticJWKS, or a JWKSCache after a fetch).

        A JWKSCache is never fetched from here: call `await verifier.refresh_keys()` first, or use
        `averify`. Raises VerificationError.
        """
        if self._sync_guard is None:
            raise TypeError("verify() needs a synchronous replay guard; use averify() with this guard")
        signing_input, payload, signature, alg, kid = self._parse(token)
        key = self.keys.get_cached_key(kid)
        if key is None:
            raise VerificationError("unknown_key", f"kid {kid!r} is not among the cached keys")
        claims, at = self._check(signing_input, payload, signature, alg, key, purpose, now)
        if claims.single_use and not self._sync_guard.consume_sync(
            claims.issuer, claims.jti, claims.exp + self._leeway, now=at
        ):
            raise VerificationError("replayed", f"jti {claims.jti!r} was already used")
        return claims

    async def averify(
        self, token: str | bytes, *, purpose: str | None = None, now: float | None = None
    ) -> VerifiedClaims:
        """Verify, fetching keys when needed (unknown kid, stale set). Raises VerificationError."""
        signing_input, payload, signature, alg, kid = self._parse(token)
        key = await self.keys.get_key(kid)
        claims, at = self._check(signing_input, payload, signature, alg, key, purpose, now)
        if claims.single_use and not await self.replay_guard.consume(
            claims.issuer, claims.jti, claims.exp + self._leeway, now=at
        ):
            raise VerificationError("replayed", f"jti {claims.jti!r} was already used")
        return claims

    async def refresh_keys(self) -> None:
        """Fetch the JWKS now when keys come from a JWKSCache (e.g. at startup); no-op otherwise."""
        if isinstance(self.keys, JWKSCache):
            await self.keys.refresh()

    def _parse(self, token: str | bytes) -> tuple[bytes, bytes, bytes, JWSAlgModel, str]:
        """Split and decode a compact JWS: (signing input, payload, signature, algorithm, kid)."""
        try:
            parts = split_compact(token, self._max_token_bytes)
            checked = self._headers.get(parts.header_segment)
            if checked is None:
                checked = self._check_header(decode_header(parts.header_segment))
                if len(self._headers) >= _HEADER_MEMO_SIZE:
                    self._headers.clear()
                self._headers[parts.header_segment] = checked
        except CompactError as exc:
            raise VerificationError("malformed", str(exc)) from None
        return parts.signing_input, parts.payload, parts.signature, checked[0], checked[1]

    def _check_header(self, header: Mapping[str, Any]) -> tuple[JWSAlgModel, str]:
        name = header.get("alg")
        alg = self._algorithms.get(name) if isinstance(name, str) else None
        if alg is None:
            raise VerificationError("bad_signature", f"algorithm {name!r} is not allowed")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in AT_JWT_TYPS:
            raise VerificationError("wrong_type", f"typ {typ!r} is not at+jwt")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise VerificationError("malformed", "JWS header has no kid")
        return alg, kid

    def _check(
        self,
        signing_input: bytes,
        payload: bytes,
        signature: bytes,
        alg: JWSAlgModel,
        key: Key,
        purpose: str | None,
        now: float | None,
    ) -> tuple[VerifiedClaims, float]:
        try:
            # The key's type, curve and own `alg` must fit the header's algorithm (an RSA key is never
            # used for "ES256" just because the kid matched).
            alg.check_key(key)
            good = alg.verify(signing_input, signature, key)
        except (JoseError, ValueError, TypeError):
            good = False
        if not good:
            raise VerificationError("bad_signature", f"signature does not verify with kid {key.kid!r}")
        try:
            claims = CLAIMS_DECODER.decode(payload)
        except msgspec.DecodeError as exc:
            raise VerificationError("malformed", f"claims: {exc}") from None
        if claims.issuer != self.issuer:
            raise VerificationError("wrong_issuer", f"iss {claims.issuer!r}")
        if claims.audience != self.audience:
            raise VerificationError("wrong_audience", f"aud {claims.audience!r}")
        at = self._clock() if now is None else now
        if at >= claims.exp + self._leeway:
            raise VerificationError("expired", f"exp {claims.exp} passed (leeway {self._leeway}s)")
        if claims.iat > at + self._leeway:
            raise VerificationError("expired", f"iat {claims.iat} is in the future (not yet valid)")
        lifetime = claims.exp - claims.iat
        if not 0 < lifetime <= self._max_lifetime:
            raise VerificationError("malformed", f"lifetime {lifetime}s outside (0, {self._max_lifetime}]")
        if purpose is not None and claims.purpose != purpose:
            raise VerificationError("wrong_purpose", f"token is for {claims.purpose!r}, not {purpose!r}")
        return claims, at
