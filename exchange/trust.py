"""Subject-token trust: the one place that decides whether an identity token may be exchanged.

The signature is the verification core's (`exchange.verify.jws`); this module is the claims policy of
subject and actor tokens. Order: strict parse and an unambiguous claims set (duplicate names refused
at every level), the issuer the token names, which picks the key source and algorithm allow-list that
issuer was configured with (and nothing else: no key ever comes from the token, and one issuer's key
never checks another's tokens), the signature, then the claims (time window, subject, audience) and
the token type, and last the binding to the requester: a client may present only tokens issued to
itself or to parties it is configured for (`issued_to`; Keycloak's token exchange shipped without
this as a CVE). Every failure is a `SubjectTokenInvalid` whose client-facing text is opaque and whose
`reason` (e.g. "subject_token:expired") goes to the audit record.

A token that passed is remembered by its exact bytes (their SHA-256, never the token itself), at most
`remember` of them (oldest first out), so the same token presented again skips what cannot come out
differently for the same bytes: the parse, the duplicate check, the header policy and the signature.
Nothing that can change is skipped: the time window, the audience, the declared type and the binding
to the presenting client are checked again on every use, and the key is asked for again: a hit
counts only while the issuer's key source still holds the very key object that verified it (a key
removed, replaced or gone stale, or a refreshed set, sends the token through the whole check again).
Only successes are remembered (a refusal is never replayed from memory), the memo belongs to this
SubjectTrust (a reload builds a new one), and nothing here consumes a subject token: replay limits
are the purpose token's (`single_use`, checked downstream), which this does not touch.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from joserfc.jwk import Key

from exchange import devidp
from exchange.errors import IssuerKeysUnavailable, SubjectTokenInvalid
from exchange.verify.compact import JWSError, split_compact
from exchange.verify.jwks import KeySource, key_source
from exchange.verify.jws import JWSVerifier
from exchange.verify.strictjson import AmbiguousJSON, decode_object, is_numeric_date
from schemas.claims import AT_JWT_TYPS
from schemas.config import Client, Settings, TrustedIssuer
from schemas.wire import TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN

__all__ = ["KeySource", "SubjectTrust", "VerifiedToken", "issued_to", "subject_trust"]

#: Verified tokens remembered per SubjectTrust (about 2 KB each, text and claims; 0 remembers none).
REMEMBER: Final = 4096


class VerifiedToken(NamedTuple):
    """A subject (or actor) token that passed every check; `claims` is read-only."""

    issuer: str
    claims: Mapping[str, Any]
    kid: str | None
    typ: str | None


@dataclass(frozen=True, slots=True)
class _Issuer:
    config: TrustedIssuer
    keys: KeySource
    jws: JWSVerifier
    audiences: frozenset[str]
    leeway: int


class _Passed(NamedTuple):
    """What a token's bytes proved once: its issuer, the answer (claims read-only), the claims as
    decoded (read by the checks here only), and the kid and key object that verified it."""

    issuer: _Issuer
    verified: VerifiedToken
    claims: dict[str, Any]
    kid: str
    key: Key


class SubjectTrust:
    """Validates identity tokens against the configured trusted issuers. Built once, at start-up."""

    def __init__(
        self,
        issuers: list[tuple[TrustedIssuer, KeySource]],
        *,
        max_token_bytes: int,
        remember: int = REMEMBER,
    ) -> None:
        # One core per issuer: its own algorithm allow-list and header memo. typ is left to
        # _type_problem (it depends on the declared token type); a kid is required.
        self._issuers = {
            cfg.issuer: _Issuer(
                cfg,
                keys,
                JWSVerifier(algorithms=cfg.algorithms, require_kid=True, max_bytes=max_token_bytes),
                frozenset(cfg.audiences),
                cfg.leeway,
            )
            for cfg, keys in issuers
        }
        self._max = max_token_bytes
        self._remember = remember
        # Keyed by the SHA-256 of the token's bytes, so the process keeps no bearer token beyond its
        # request: ~2 µs per token with the CPU's SHA instructions (callgrind, which emulates none,
        # counts ~19k instructions; timed, a string hash saves ~0.5% of an exchange). A hit is an equal
        # digest: a collision of SHA-256, not a near miss, would be needed to reuse another's result.
        self._passed: OrderedDict[bytes, _Passed] = OrderedDict()

    def sources(self) -> dict[str, KeySource]:
        """Each trusted issuer's key source (for readiness and metrics)."""
        return {name: issuer.keys for name, issuer in self._issuers.items()}

    def reusable_source(self, config: TrustedIssuer) -> KeySource | None:
        """This issuer's fetched-keys cache, if `config` fetches the same keys the same way (a reload
        keeps it: its keys, freshness and cooldown); None for a file, which a reload reads again."""
        old = self._issuers.get(config.issuer)
        if old is None or config.jwks_uri is None:
            return None
        same = (old.config.jwks_uri, old.config.jwks_cooldown) == (config.jwks_uri, config.jwks_cooldown)
        return old.keys if same else None

    async def validate(
        self,
        token: str,
        token_type: str,
        *,
        presenter: Client | None,
        which: str = "subject_token",
        now: float | None = None,
    ) -> VerifiedToken:
        """Verify a subject or actor token presented by `presenter` (the authenticated client).

        The token must have been issued to a party the presenter may speak for (`issued_to`); pass
        `presenter=None` only to diagnose a token outside any request (`exchange rules explain`).
        """
        now = time.time() if now is None else now
        digest = (
            hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
            if len(token) <= self._max
            else None
        )
        passed = self._passed.get(digest) if digest is not None else None
        fresh = passed is None or passed.issuer.keys.get_cached_key(passed.kid) is not passed.key
        if passed is None or fresh:
            passed = await self._verify(token, which)
        issuer, verified, claims = passed.issuer, passed.verified, passed.claims
        problem = (
            _claims_problem(issuer, claims, now)
            or _type_problem(issuer.config, verified.typ, token_type)
            or (_presenter_problem(issuer, claims, presenter) if presenter is not None else None)
        )
        if problem is not None:
            raise SubjectTokenInvalid(problem, which=which)
        if fresh and digest is not None and self._remember:  # passed: within the size cap
            if len(self._passed) >= self._remember:
                self._passed.popitem(last=False)  # the oldest (an expired one is never a hit anyway)
            self._passed[digest] = passed
        return verified

    async def _verify(self, token: str, which: str) -> _Passed:
        """The bytes' part of the check: strict parse, the named issuer, its key, the signature."""
        try:
            parts = split_compact(token, self._max)
            # Read before the signature only to learn which issuer's keys may check it. These claims
            # are the ones returned: the core checks the signature over these very payload bytes.
            claims = decode_object(parts.payload)
        except JWSError as exc:
            raise SubjectTokenInvalid(exc.problem, which=which) from None
        except AmbiguousJSON as exc:
            raise SubjectTokenInvalid(
                "duplicate_member" if exc.duplicate else "malformed", which=which
            ) from None

        iss = claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise SubjectTokenInvalid("untrusted_issuer", which=which)
        try:
            header, _, key = await issuer.jws.check(parts, issuer.keys)
        except JWSError as exc:
            if exc.problem == "jwks_unavailable":
                raise IssuerKeysUnavailable(which=which) from None
            raise SubjectTokenInvalid(exc.problem, which=which) from None
        typ = header.get("typ")
        kid = header.get("kid")
        assert isinstance(kid, str), "the issuer's header policy requires a kid"
        verified = VerifiedToken(
            issuer.config.issuer, MappingProxyType(claims), key.kid, typ if isinstance(typ, str) else None
        )
        return _Passed(issuer, verified, claims, kid, key)


def _claims_problem(issuer: _Issuer, claims: dict[str, Any], now: float) -> str | None:
    """Why the claims of a verified token do not hold at `now`, or None (the first reason, in order)."""
    leeway = issuer.leeway
    get = claims.get
    exp = get("exp")
    if exp is None:
        return "missing_exp"
    if not is_numeric_date(exp):
        return "bad_numeric_date"
    if now >= exp + leeway:
        return "expired"
    nbf = get("nbf")
    if nbf is not None:
        if not is_numeric_date(nbf):
            return "bad_numeric_date"
        if now < nbf - leeway:
            return "not_yet_valid"
    iat, auth_time = get("iat"), get("auth_time")
    if (iat is not None and not is_numeric_date(iat)) or (
        auth_time is not None and not is_numeric_date(auth_time)
    ):
        return "bad_numeric_date"
    if iat is not None and iat > now + leeway:
        return "issued_in_future"
    sub = get("sub")
    if not isinstance(sub, str) or not sub:
        return "missing_sub"
    aud = get("aud")
    audiences = issuer.audiences
    if isinstance(aud, str):
        return None if aud in audiences else "wrong_audience"
    if isinstance(aud, list) and any(isinstance(a, str) and a in audiences for a in aud):
        return None
    return "wrong_audience"


def issued_to(claims: Mapping[str, Any], our_audiences: frozenset[str]) -> frozenset[str] | None:
    """The party a token was issued to, as a set of names that each denote it; None when ambiguous.

    `azp` (OpenID Connect), else `client_id` (RFC 9068 access tokens) name it; both present must agree.
    Without them it is the token's single audience beside ours; a token whose only audiences are ours
    was issued to the exchange itself, and its party is named by those audiences (so a client may be
    configured for "tokens issued to purpose-exchange"). Two or more audiences beside ours and no
    `azp` leave the party unknown (OpenID Connect requires azp then): None.
    """
    azp, client_id = claims.get("azp"), claims.get("client_id")
    if azp is not None or client_id is not None:
        name = client_id if azp is None else azp
        if not isinstance(name, str) or not name or (client_id is not None and client_id != name):
            return None
        return frozenset((name,))
    aud = claims.get("aud")
    if isinstance(aud, str):
        return frozenset((aud,))  # beside ours or ours, the one audience names the party
    auds = [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []
    others = [a for a in auds if a not in our_audiences]
    if len(others) > 1:
        return None
    return frozenset(others) if others else frozenset(auds)


def _presenter_problem(issuer: _Issuer, claims: Mapping[str, Any], presenter: Client) -> str | None:
    """A client may present only tokens issued to itself or to the parties it is configured for."""
    parties = issued_to(claims, issuer.audiences)
    if parties is None:
        return "ambiguous_party"
    if presenter.client_id not in parties and parties.isdisjoint(presenter.tokens_issued_to):
        return "not_issued_to_client"
    return None


def _type_problem(config: TrustedIssuer, typ: str | None, declared: str) -> str | None:
    is_at = typ is not None and typ.lower() in AT_JWT_TYPS
    if declared == TOKEN_TYPE_ID_TOKEN and is_at:
        return "access_token_declared_as_id_token"
    if declared == TOKEN_TYPE_ACCESS_TOKEN and not is_at and config.require_at_jwt_typ:
        return "not_an_access_token"
    return None


def subject_trust(settings: Settings, *, previous: SubjectTrust | None = None) -> SubjectTrust:
    """The subject trust exactly as the service builds it at start-up: every trusted issuer with its key
    source, and the dev issuer when configured. `exchange rules explain` verifies through this too.
    `previous` (a reload): JWKS caches of issuers whose key source did not change are kept."""
    sources: list[tuple[TrustedIssuer, KeySource]] = [
        (
            t,
            (previous.reusable_source(t) if previous is not None else None)
            or key_source(jwks_file=t.jwks_file, jwks_uri=t.jwks_uri, cooldown=t.jwks_cooldown),
        )
        for t in settings.trusted_issuers
    ]
    if settings.dev_issuer is not None:
        key = devidp.load_or_create_key(settings.dev_issuer.key_file)
        sources.append((devidp.trusted_issuer(settings.dev_issuer), key_source(jwks=devidp.public_jwks(key))))
    return SubjectTrust(sources, max_token_bytes=settings.limits.max_token_bytes)
