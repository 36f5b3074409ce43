"""`PurposeTokenVerifier`: the offline check a downstream service runs on every purpose token.

Order of checks, cheapest and least trusting first: the verification core (`exchange.verify.jws`: size
cap and serialisation, header policy with `typ` at+jwt and a required kid, the key from this
verifier's own key source, the signature), then the purpose-token claims policy here (issuer,
audience, time window, lifetime, purpose), then the replay guard for single-use tokens. Nothing in the
payload is looked at before the signature is good.

Everything that can be built once is built once: the core (its algorithm objects, its memo of headers
already checked, each with the key it was last checked with), the claims decoder (module scope). Per
call, a cached-key verify is one split, two strict base64url decodes, one dict lookup for the header and
one for the key, the signature check, one msgspec decode with its duplicate-name check (for the
exchange's own spelling: one re-encode and a comparison) and a handful of comparisons; nothing is built
but the claims (`JWSVerifier.check_sync` hands back a plain tuple).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

from exchange.verify.claims import VerifiedClaims, decode_claims
from exchange.verify.compact import JWSError, Problem
from exchange.verify.errors import Reason, VerificationError
from exchange.verify.jwks import JWKSCache, KeySource, key_source
from exchange.verify.jws import JWSVerifier
from exchange.verify.replay import InMemoryReplayGuard, ReplayGuard, SyncReplayGuard
from schemas.algorithms import ASYMMETRIC_ALGORITHMS
from schemas.algorithms import DEFAULT_ALGORITHMS as DEFAULT_ALGORITHMS
from schemas.base import MAX_LEEWAY, MAX_TOKEN_LIFETIME
from schemas.claims import AT_JWT_TYPS

#: Asymmetric algorithms a verifier may be configured with. HS* and "none" are never among them: a
#: verifier holding only public keys must not accept a MAC made with a public key as its secret.
SUPPORTED_ALGORITHMS: Final = ASYMMETRIC_ALGORITHMS
DEFAULT_MAX_TOKEN_BYTES: Final = 8192
DEFAULT_LEEWAY: Final = 10
DEFAULT_MAX_LIFETIME: Final = MAX_TOKEN_LIFETIME

# The core's precise problems, as the verifier's stable (coarser) reason codes.
REASON_OF: Final[dict[Problem, Reason]] = {
    "oversized": "malformed",
    "malformed": "malformed",
    "forbidden_header": "malformed",
    "duplicate_member": "malformed",
    "missing_kid": "malformed",
    "wrong_type": "wrong_type",
    "unknown_kid": "unknown_key",
    "unknown_kid_refetch_suppressed": "unknown_key",
    "jwks_unavailable": "keys_unavailable",
    "algorithm_not_allowed": "bad_signature",
    "algorithm_key_mismatch": "bad_signature",
    "bad_signature": "bad_signature",
}


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
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")
        if max_lifetime <= 0 or max_token_bytes < 256:
            raise ValueError("max_lifetime must be positive and max_token_bytes at least 256")
        if jwks is not None and jwks_uri is not None:
            raise ValueError("pass jwks_uri or jwks, not both")

        self.issuer = issuer
        self.audience = audience
        self.keys: KeySource = key_source(jwks=jwks, jwks_uri=jwks_uri, issuer=issuer)
        # The core: algorithm objects built once, typ at+jwt and a kid required, its own header memo.
        self._jws = JWSVerifier(
            algorithms=algorithms, typ=AT_JWT_TYPS, require_kid=True, max_bytes=max_token_bytes
        )
        self._leeway = leeway
        self._max_lifetime = max_lifetime
        self._clock = clock
        self.replay_guard: ReplayGuard = replay_guard if replay_guard is not None else InMemoryReplayGuard()
        self._sync_guard: SyncReplayGuard | None = (
            self.replay_guard if isinstance(self.replay_guard, SyncReplayGuard) else None
        )

    @property
    def algorithms(self) -> tuple[str, ...]:
        return self._jws.algorithms

    def verify(
        self, token: str | bytes, *, purpose: str | None = None, now: float | None = None
    ) -> VerifiedClaims:
        """Verify synchronously (Flask, Django, threads), fetching keys when needed. Raises VerificationError.

        Same core and same key policy as `averify`: a JWKSCache fetches a missing or stale set under
        its cooldown, staleness and size rules, blocking this thread; threads share one fetch.
        """
        if self._sync_guard is None:
            raise TypeError("verify() needs a synchronous replay guard; use averify() with this guard")
        try:
            payload = self._jws.check_sync(token, self.keys)[1]
        except JWSError as exc:
            raise VerificationError(REASON_OF[exc.problem], str(exc)) from None
        claims, at = self._check(payload, purpose, now)
        if claims.single_use and not self._sync_guard.consume_sync(
            claims.issuer, claims.jti, claims.exp + self._leeway, now=at
        ):
            raise VerificationError("replayed", f"jti {claims.jti!r} was already used")
        return claims

    async def averify(
        self, token: str | bytes, *, purpose: str | None = None, now: float | None = None
    ) -> VerifiedClaims:
        """Verify, fetching keys when needed (unknown kid, stale set). Raises VerificationError."""
        try:
            payload = (await self._jws.check(token, self.keys))[1]
        except JWSError as exc:
            raise VerificationError(REASON_OF[exc.problem], str(exc)) from None
        claims, at = self._check(payload, purpose, now)
        if claims.single_use and not await self.replay_guard.consume(
            claims.issuer, claims.jti, claims.exp + self._leeway, now=at
        ):
            raise VerificationError("replayed", f"jti {claims.jti!r} was already used")
        return claims

    async def refresh_keys(self) -> None:
        """Fetch the JWKS now when keys come from a JWKSCache (e.g. at startup); no-op otherwise."""
        if isinstance(self.keys, JWKSCache):
            await self.keys.refresh()

    def _check(self, payload: bytes, purpose: str | None, now: float | None) -> tuple[VerifiedClaims, float]:
        """The purpose-token claims policy, on a payload whose signature is good."""
        claims = decode_claims(payload)
        if claims.issuer != self.issuer:
            raise VerificationError("wrong_issuer", f"iss {claims.issuer!r}")
        if claims.audience != self.audience:
            raise VerificationError("wrong_audience", f"aud {claims.audience!r}")
        at = self._clock() if now is None else now
        check_window(claims.iat, claims.exp, at, leeway=self._leeway, max_lifetime=self._max_lifetime)
        if purpose is not None and claims.purpose != purpose:
            raise VerificationError("wrong_purpose", f"token is for {claims.purpose!r}, not {purpose!r}")
        return claims, at


def check_window(iat: int, exp: int, at: float, *, leeway: int, max_lifetime: int) -> None:
    """The time checks every token the exchange mints gets: not expired, not issued in the future, a
    lifetime in (0, max_lifetime]. Raises VerificationError."""
    if at >= exp + leeway:
        raise VerificationError("expired", f"exp {exp} passed (leeway {leeway}s)")
    if iat > at + leeway:
        raise VerificationError("expired", f"iat {iat} is in the future (not yet valid)")
    lifetime = exp - iat
    if not 0 < lifetime <= max_lifetime:
        raise VerificationError("malformed", f"lifetime {lifetime}s outside (0, {max_lifetime}]")
