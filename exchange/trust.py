"""Subject-token trust: the one place that decides whether an identity token may be exchanged.

Order matters and is cheap-first: size, shape, header, issuer, algorithm, key, signature, claims,
token type. Every failure is a `SubjectTokenInvalid` whose client-facing text is opaque and whose
`reason` (e.g. "subject_token:expired") goes to the audit record. Keys come only from configuration
(JWKS file or URI of a trusted issuer), never from the token: `jwk`, `jku`, `x5u`, `x5c` are refused.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeGuard

import msgspec
from joserfc.errors import JoseError

# JWSAlgModel is public in joserfc.jws, though missing from its __all__.
from joserfc.jws import JWSAlgModel, JWSRegistry  # type: ignore[attr-defined]

from exchange import devidp
from exchange.errors import SubjectTokenInvalid
from exchange.verify.compact import CompactError, HeaderMemo, split_compact
from exchange.verify.errors import VerificationError
from exchange.verify.jwks import JWKSCache, KeySource, StaticJWKS
from schemas.claims import AT_JWT_TYPS
from schemas.config import Settings, TrustedIssuer
from schemas.wire import TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN

__all__ = ["KeySource", "SubjectTrust", "VerifiedToken", "key_source", "subject_trust"]

_claims_decoder = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A subject (or actor) token that passed every check; `claims` is read-only."""

    issuer: str
    claims: Mapping[str, Any]
    kid: str
    typ: str | None


@dataclass(frozen=True, slots=True)
class _Issuer:
    config: TrustedIssuer
    keys: KeySource
    algorithms: dict[str, JWSAlgModel]
    audiences: frozenset[str]


class SubjectTrust:
    """Validates identity tokens against the configured trusted issuers. Built once, at start-up."""

    def __init__(self, issuers: list[tuple[TrustedIssuer, KeySource]], *, max_token_bytes: int) -> None:
        # joserfc's algorithm objects, looked up once per issuer from the class table (get_alg would
        # re-check the allow-list and warn about EdDSA on every call).
        self._issuers = {
            cfg.issuer: _Issuer(
                cfg,
                keys,
                {name: JWSRegistry.algorithms[name] for name in cfg.algorithms},
                frozenset(cfg.audiences),
            )
            for cfg, keys in issuers
        }
        self._max = max_token_bytes
        self._headers = HeaderMemo()

    async def validate(
        self, token: str, token_type: str, *, which: str = "subject_token", now: float | None = None
    ) -> VerifiedToken:
        def fail(reason: str) -> SubjectTokenInvalid:
            return SubjectTokenInvalid(reason, which=which)

        try:
            parts = split_compact(token, self._max)
            header = self._headers.get(parts.header_segment)
            claims = _claims_decoder.decode(parts.payload)
        except CompactError as exc:
            raise fail(exc.problem) from None
        except (msgspec.DecodeError, RecursionError):
            raise fail("malformed") from None

        alg = header["alg"]
        iss = claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise fail("untrusted_issuer")
        model = issuer.algorithms.get(alg)
        if model is None:
            raise fail("algorithm_not_allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise fail("missing_kid")
        try:
            key = await issuer.keys.get_key(kid)
        except VerificationError as exc:  # unknown kid, or the JWKS could not be had: fail closed
            raise fail("unknown_kid" if exc.reason == "unknown_key" else f"jwks_{exc.reason}") from None
        key_alg = getattr(key, "alg", None)
        if key_alg is not None and key_alg != alg:
            raise fail("algorithm_key_mismatch")
        try:
            # The key's type and curve must fit the algorithm: an RSA public key never becomes an
            # HMAC secret, whatever the header says.
            model.check_key(key)
            valid = model.verify(parts.signing_input, parts.signature, key)
        except (JoseError, ValueError, TypeError):
            valid = False
        if not valid:
            raise fail("bad_signature")

        self._check_claims(issuer, claims, fail, time.time() if now is None else now)
        typ = header.get("typ")
        self._check_type(issuer.config, typ if isinstance(typ, str) else None, token_type, fail)
        return VerifiedToken(issuer=iss, claims=MappingProxyType(claims), kid=kid, typ=typ)  # type: ignore[arg-type]

    @staticmethod
    def _check_claims(issuer: _Issuer, claims: dict[str, Any], fail: Any, now: float) -> None:
        leeway = issuer.config.leeway
        exp = claims.get("exp")
        if not _is_number(exp):
            raise fail("missing_exp")
        if now >= exp + leeway:
            raise fail("expired")
        nbf = claims.get("nbf")
        if nbf is not None and (not _is_number(nbf) or now < nbf - leeway):
            raise fail("not_yet_valid")
        iat = claims.get("iat")
        if iat is not None and (not _is_number(iat) or iat > now + leeway):
            raise fail("issued_in_future")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise fail("missing_sub")
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not issuer.audiences.intersection(a for a in auds if isinstance(a, str)):
            raise fail("wrong_audience")

    @staticmethod
    def _check_type(config: TrustedIssuer, typ: str | None, declared: str, fail: Any) -> None:
        is_at = typ is not None and typ.lower() in AT_JWT_TYPS
        if declared == TOKEN_TYPE_ID_TOKEN and is_at:
            raise fail("access_token_declared_as_id_token")
        if declared == TOKEN_TYPE_ACCESS_TOKEN and not is_at and config.require_at_jwt_typ:
            raise fail("not_an_access_token")


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def key_source(issuer: TrustedIssuer) -> KeySource:
    """The issuer's keys: a JWKS file read once, or a JWKS URI behind the shared cache."""
    if issuer.jwks_file is not None:
        return StaticJWKS.from_file(issuer.jwks_file)
    assert issuer.jwks_uri is not None, "config check guarantees one of jwks_file / jwks_uri"
    return JWKSCache(issuer.jwks_uri, cooldown=issuer.jwks_cooldown)


def subject_trust(settings: Settings) -> SubjectTrust:
    """The subject trust exactly as the service builds it at start-up: every trusted issuer with its key
    source, and the dev issuer when configured. `exchange rules explain` verifies through this too."""
    sources: list[tuple[TrustedIssuer, KeySource]] = [(t, key_source(t)) for t in settings.trusted_issuers]
    if settings.dev_issuer is not None:
        key = devidp.load_or_create_key(settings.dev_issuer.key_file)
        sources.append((devidp.trusted_issuer(settings.dev_issuer), StaticJWKS(devidp.public_jwks(key))))
    return SubjectTrust(sources, max_token_bytes=settings.limits.max_token_bytes)
