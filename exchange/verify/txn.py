"""`TxnTokenVerifier`: the check a workload runs on the `Txn-Token` HTTP header before it trusts the
transaction's context (draft-ietf-oauth-transaction-tokens-10 §12).

    verifier = TxnTokenVerifier(trust_domain="trust-domain.example", issuer="https://exchange.example")
    claims = await verifier.averify(txn_token_of(values_of_the_txn_token_header), scope="orders.place")
    claims.txn, claims.req_wl, claims.tctx, claims.rctx

What §12.2 requires, and more, in the order of the purpose-token verifier: the verification core
(`exchange.verify.jws`: size cap and serialisation, header policy with `typ` txntoken+jwt (§9.1) and a
required kid, the key only from this verifier's key source (the exchange's JWKS), the signature), then
the Txn-Token claims policy: unknown claims refused (`schemas.claims.TxnClaims`), `iss` is the exchange,
`aud` is our trust domain (§9.2: never accepted outside it), not expired, `iat` not in the future, a
lifetime of at most `max_lifetime`, the scope when asked. The exchange checks a Txn-Token presented for
replacement (§13.15) with this same class, with no leeway.

A workload forwards the header exactly as it received it (§12.2): nothing here rewrites it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Final, NamedTuple

import msgspec

from exchange.verify.compact import JWSError
from exchange.verify.errors import VerificationError
from exchange.verify.jwks import JWKSCache, KeySource, key_source
from exchange.verify.jws import JWSVerifier
from exchange.verify.strictjson import AmbiguousJSON, refuse_duplicates
from exchange.verify.verifier import DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_BYTES, REASON_OF, check_window
from schemas.algorithms import DEFAULT_ALGORITHMS
from schemas.base import MAX_LEEWAY, MAX_TOKEN_LIFETIME
from schemas.claims import TXN_TOKEN_TYPS, TxnClaims, txn_subject

__all__ = ["TXN_TOKEN_HEADER", "TxnClaims", "TxnToken", "TxnTokenVerifier", "txn_token_of"]

#: The HTTP field that carries a Txn-Token between workloads (draft §12.1), lower-cased as ASGI has it.
TXN_TOKEN_HEADER: Final = "txn-token"
_DECODER: Final = msgspec.json.Decoder(TxnClaims)


class TxnToken(NamedTuple):
    """What a service gets for a request that carried a valid Txn-Token: the verified `claims` (`txn`,
    `req_wl`, `tctx`, `rctx`, `sub`, `scope`...) and the header `value`, to pass on unmodified."""

    claims: TxnClaims
    value: str

    def headers(self) -> dict[str, str]:
        """The header for an outbound call in the same transaction (draft §12.2: as it was received)."""
        return {"Txn-Token": self.value}


def txn_token_of(values: Iterable[str | bytes]) -> str | None:
    """The Txn-Token carried by the `Txn-Token` header field values `values`, or None when there is none.

    Draft §12.1: the value MUST be exactly one Txn-Token. Two fields (a proxy may join them with a
    comma), an empty value, or anything but one compact JWS (commas, spaces) is refused as malformed
    rather than guessed at.
    """
    found = [v.decode("latin-1") if isinstance(v, bytes | bytearray) else v for v in values]
    if not found:
        return None
    if len(found) > 1:
        raise VerificationError("malformed", "more than one Txn-Token header")
    token = found[0].strip(" \t")
    if not token or token.count(".") != 2 or any(c in token for c in ", \t"):
        raise VerificationError("malformed", "the Txn-Token header is not exactly one compact JWS")
    return token


class TxnTokenVerifier:
    """Verifies Txn-Tokens of one trust domain from one exchange.

    Keys: `jwks_uri`, `jwks` (a JWKS dict or any KeySource), or neither: `{issuer}/.well-known/jwks.json`.
    `clock` returns epoch seconds; `now=` on a call overrides it.
    """

    def __init__(
        self,
        *,
        trust_domain: str,
        issuer: str,
        jwks_uri: str | None = None,
        jwks: KeySource | Mapping[str, Any] | None = None,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        leeway: int = DEFAULT_LEEWAY,
        max_lifetime: int = MAX_TOKEN_LIFETIME,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not trust_domain or not issuer:
            raise ValueError("TxnTokenVerifier needs a non-empty trust_domain and issuer")
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")
        if max_lifetime <= 0:
            raise ValueError("max_lifetime must be positive")
        self.trust_domain = trust_domain
        self.issuer = issuer
        self.keys: KeySource = key_source(jwks=jwks, jwks_uri=jwks_uri, issuer=issuer)
        self._jws = JWSVerifier(
            algorithms=algorithms, typ=TXN_TOKEN_TYPS, require_kid=True, max_bytes=max_token_bytes
        )
        self._leeway = leeway
        self._max_lifetime = max_lifetime
        self._clock = clock

    @property
    def algorithms(self) -> tuple[str, ...]:
        return self._jws.algorithms

    def verify(self, token: str | bytes, *, scope: str | None = None, now: float | None = None) -> TxnClaims:
        """Verify synchronously (Flask, Django, threads), fetching keys when needed, as
        PurposeTokenVerifier.verify does. Raises VerificationError."""
        try:
            payload = self._jws.check_sync(token, self.keys)[1]
        except JWSError as exc:
            raise VerificationError(REASON_OF[exc.problem], str(exc)) from None
        return self._check(payload, scope, now)

    async def averify(
        self, token: str | bytes, *, scope: str | None = None, now: float | None = None
    ) -> TxnClaims:
        """Verify, fetching keys when needed (unknown kid, stale set). Raises VerificationError."""
        try:
            payload = (await self._jws.check(token, self.keys))[1]
        except JWSError as exc:
            raise VerificationError(REASON_OF[exc.problem], str(exc)) from None
        return self._check(payload, scope, now)

    async def refresh_keys(self) -> None:
        """Fetch the JWKS now when keys come from a JWKSCache (e.g. at startup); no-op otherwise."""
        if isinstance(self.keys, JWKSCache):
            await self.keys.refresh()

    def _check(self, payload: bytes, scope: str | None, now: float | None) -> TxnClaims:
        """The Txn-Token claims policy, on a payload whose signature is good."""
        try:
            claims = _DECODER.decode(payload)
            refuse_duplicates(payload, claims)
        except (msgspec.DecodeError, AmbiguousJSON) as exc:
            raise VerificationError("malformed", f"claims: {exc}") from None
        if claims.iss != self.issuer:
            raise VerificationError("wrong_issuer", f"iss {claims.iss!r}")
        if claims.aud != self.trust_domain:
            raise VerificationError("wrong_audience", f"aud {claims.aud!r} is not our trust domain")
        at = self._clock() if now is None else now
        check_window(claims.iat, claims.exp, at, leeway=self._leeway, max_lifetime=self._max_lifetime)
        if claims.sub != txn_subject(claims.sub_id.iss, claims.sub_id.sub):
            raise VerificationError("malformed", "sub does not name sub_id's subject")
        if scope is not None and claims.scope != scope:
            raise VerificationError("wrong_purpose", f"Txn-Token is for {claims.scope!r}, not {scope!r}")
        return claims
