"""The Transaction Token Service at the token endpoint (draft-ietf-oauth-transaction-tokens-10 §10,
§11): who may ask for a Txn-Token, what it may present as the subject, and what the token may assert.

`exchange/service.py` runs the steps in order; this module decides each Txn-Token-specific one:

- the requesting workload (§11.3, §13.10): an authenticated client listed in `[txn_tokens] workloads`
  (never a public one: §11.5 wants the workload authenticated), presenting a subject token of a kind
  listed for it;
- the audience (§11.1): exactly the trust domain;
- the subject (§11.2, §11.3 "MUST validate the subject_token"): a trusted issuer's token through
  `SubjectTrust`; a self-signed JWT (§11.2.1) through the one verification core with the keys of the
  workload that authenticated (never a key the token names), `iss` that same workload; an unsigned JSON
  object (§11.2.2), only for a workload configured for it; or a Txn-Token to replace (§13.15), through
  `TxnTokenVerifier` with the exchange's own published keys and no leeway (an expired one is refused);
- the Txn-Token's `sub` namespace (§9.2: unique within the trust domain): the trusted issuer, the
  workload's configured namespace, or the replaced token's, unchanged;
- the grant (§11.3, §13.6, §13.14, §13.15): the subject's scope covers the purpose; tctx and rctx as the
  purpose maps them (rules/txn.py); a replacement only narrows (same or a declared narrower purpose),
  only adds to tctx and rctx, never past the replacement limit.

Every failure is an OAuthError: subject tokens opaque (`SubjectTokenInvalid`, the reason for the audit
record), policy refusals as explicit denials.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from exchange.clients import ASSERTION_ALGORITHMS, ASSERTION_LEEWAY
from exchange.errors import InvalidRequest, InvalidTarget, SubjectTokenInvalid, UnauthorizedClient
from exchange.trust import SubjectTrust
from exchange.verify.compact import JWSError
from exchange.verify.errors import VerificationError
from exchange.verify.jwks import KeySource
from exchange.verify.jws import JWSVerifier
from exchange.verify.strictjson import AmbiguousJSON, decode_object, is_numeric_date
from exchange.verify.txn import TxnTokenVerifier
from rules import Denial, DenialError
from rules.txn import TxnMapping
from schemas.base import MAX_TOKEN_LIFETIME
from schemas.claims import TxnClaims
from schemas.config import Client, TxnTokens, TxnWorkload
from schemas.equality import same
from schemas.wire import (
    TOKEN_TYPE_PREFIX,
    TOKEN_TYPE_SELF_SIGNED,
    TOKEN_TYPE_TXN_TOKEN,
    TOKEN_TYPE_UNSIGNED_JSON,
    TokenRequest,
)

# A self-signed subject is a plain JWT (§11.2.1 names no type); never an access token, a client
# assertion or a Txn-Token presented as one.
_SELF_SIGNED_TYPS: Final = (None, "jwt", "application/jwt")


@dataclass(frozen=True, slots=True)
class TxnSubject:
    """A subject that passed its checks: whose it is (`namespace`, `sub`), what rules see (`claims`),
    when it expires, and, for a replacement, the Txn-Token being replaced."""

    namespace: str
    sub: str
    claims: Mapping[str, Any]
    exp: int | None
    replacing: TxnClaims | None = None


class TransactionTokens:
    """The TTS's decisions, built once from `[txn_tokens]` (exchange/app.py `build_runtime`)."""

    def __init__(
        self,
        config: TxnTokens,
        *,
        issuer: str,
        token_endpoint: str,
        trust: SubjectTrust,
        own_keys: KeySource,
        workload_keys: Mapping[str, KeySource],
        max_token_bytes: int,
    ) -> None:
        self.trust_domain = config.trust_domain
        self.ttl = config.ttl
        self.max_replacements = config.max_replacements
        self._workloads = {w.client_id: w for w in config.workloads}
        self._kinds = {
            w.client_id: frozenset(TOKEN_TYPE_PREFIX + kind for kind in w.subject_token_types)
            for w in config.workloads
        }
        self._trust = trust
        # Each workload's own registered keys: the only keys that can vouch for its self-signed subjects.
        self._workload_keys = dict(workload_keys)
        self._self_signed = JWSVerifier(
            algorithms=ASSERTION_ALGORITHMS,
            typ=_SELF_SIGNED_TYPS,
            require_kid=False,
            max_bytes=max_token_bytes,
        )
        # §13.15 "MUST NOT issue a new Txn-Token when the Txn-Token being replaced has expired": no leeway.
        self._replaced = TxnTokenVerifier(
            trust_domain=config.trust_domain,
            issuer=issuer,
            jwks=own_keys,
            leeway=0,
            max_token_bytes=max_token_bytes,
        )
        # §11.2.1: the self-signed JWT's aud is the TTS's identifier: its issuer (or its token endpoint,
        # as RFC 7523 lets client assertions say).
        self._audiences = frozenset({issuer, token_endpoint})
        self._max_bytes = max_token_bytes

    def workload(self, client: Client, subject_token_type: str) -> TxnWorkload:
        """The requesting workload, authorised to present this kind of subject token (§11.3, §13.10)."""
        workload = self._workloads.get(client.client_id)
        if workload is None:
            raise UnauthorizedClient("this client may not request Txn-Tokens", reason="not_a_txn_workload")
        if subject_token_type not in self._kinds[client.client_id]:
            raise UnauthorizedClient(
                "this workload may not present this subject_token_type",
                reason=f"subject_token_type_not_allowed:{subject_token_type.removeprefix(TOKEN_TYPE_PREFIX)}",
            )
        return workload

    def audience(self, request: TokenRequest) -> str:
        """§11.1: `audience` REQUIRED, the trust domain and nothing else."""
        asked = set(request.audience) | set(request.resource)
        if not asked:
            raise InvalidRequest("audience is required for a Txn-Token: name the trust domain")
        if asked != {self.trust_domain}:
            raise InvalidTarget("a Txn-Token's audience is the trust domain")
        return self.trust_domain

    async def subject(
        self, request: TokenRequest, workload: TxnWorkload, client: Client, now: float
    ) -> TxnSubject:
        """The subject of the request, verified by its kind (§11.2, §11.3)."""
        token, kind = request.subject_token or "", request.subject_token_type or ""
        if kind == TOKEN_TYPE_TXN_TOKEN:
            return await self._replacement(token, now)
        if kind == TOKEN_TYPE_SELF_SIGNED:
            return await self._self_signed_subject(token, workload, now)
        if kind == TOKEN_TYPE_UNSIGNED_JSON:
            return self._unsigned_subject(token, workload, now)
        verified = await self._trust.validate(token, kind, presenter=client, now=now)
        return TxnSubject(
            namespace=verified.issuer,
            sub=str(verified.claims["sub"]),
            claims=verified.claims,
            exp=int(verified.claims["exp"]),
        )

    def grant(
        self, mapping: TxnMapping, request: TokenRequest, subject: TxnSubject
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(tctx, rctx) for this request (§11.3), or DenialError: the subject's scope must cover the
        purpose (§13.6, §13.14); a replacement only narrows and only adds (§13.15)."""
        replaced = subject.replacing
        if replaced is None:
            denial = mapping.scope_denial(subject.claims)
            if denial is not None:
                raise DenialError(denial)
            return mapping.transaction_context(request.request_details), mapping.request_context(
                request.request_context
            )
        if not mapping.may_replace(replaced.scope):
            raise _deny(
                "replacement_widens_scope",
                "a Txn-Token may only be replaced by one of the same or a narrower purpose",
                "invalid_scope",
            )
        if replaced.replacements >= self.max_replacements:
            raise _deny("replacement_limit", "this transaction's Txn-Token was replaced too many times")
        tctx = _added(
            replaced.transaction_context,
            mapping.transaction_context(request.request_details, replacing=True),
            "tctx",
        )
        rctx = _added(replaced.request_context, mapping.request_context(request.request_context), "rctx")
        return tctx, rctx

    async def _replacement(self, token: str, now: float) -> TxnSubject:
        try:
            replaced = await self._replaced.averify(token, now=now)
        except VerificationError as exc:
            raise SubjectTokenInvalid(exc.reason) from None
        # The rules see the replaced token's claims, with `sub` the subject's own (as for an original:
        # `ctx.issuer` is its namespace), so a subject_binding reads the same before and after.
        return TxnSubject(
            namespace=replaced.sub_id.iss,
            sub=replaced.sub_id.sub,
            claims={**replaced.to_dict(), "sub": replaced.sub_id.sub},
            exp=replaced.exp,
            replacing=replaced,
        )

    async def _self_signed_subject(self, token: str, workload: TxnWorkload, now: float) -> TxnSubject:
        """§11.2.1: signed by the requesting workload's own key; iss that workload, aud us, iat and exp."""
        fail = SubjectTokenInvalid
        keys = self._workload_keys.get(workload.client_id)
        if keys is None:  # config check requires keys for a self_signed workload; fail closed anyway
            raise fail("no_workload_keys")
        try:
            claims = decode_object((await self._self_signed.check(token, keys))[1])
        except JWSError as exc:
            raise fail(exc.problem) from None
        except AmbiguousJSON as exc:
            raise fail("duplicate_member" if exc.duplicate else "malformed") from None
        if claims.get("iss") != workload.client_id:
            raise fail("issuer_is_not_the_requesting_workload")
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not self._audiences.intersection(a for a in auds if isinstance(a, str)):
            raise fail("wrong_audience")
        iat, exp, nbf = claims.get("iat"), claims.get("exp"), claims.get("nbf")
        if not is_numeric_date(iat) or not is_numeric_date(exp) or not (nbf is None or is_numeric_date(nbf)):
            raise fail("missing_iat_or_exp")
        _check_window(fail, now, exp=exp, iat=iat, nbf=nbf)
        return TxnSubject(
            namespace=workload.subject_namespace or workload.client_id,
            sub=_subject_of(claims, fail),
            claims=claims,
            exp=exp,
        )

    def _unsigned_subject(self, token: str, workload: TxnWorkload, now: float) -> TxnSubject:
        """§11.2.2: a JSON object with `sub`; it proves nothing, so it speaks only for the workload that
        authenticated, in the namespace configured for it. An `exp` it carries is honoured (§6)."""
        fail = SubjectTokenInvalid
        raw = token.encode("utf-8", "surrogatepass")
        if len(raw) > self._max_bytes:
            raise fail("oversized")
        try:
            claims = decode_object(raw)
        except AmbiguousJSON as exc:
            raise fail("duplicate_member" if exc.duplicate else "malformed") from None
        exp = claims.get("exp")
        if exp is not None:
            if not is_numeric_date(exp):
                raise fail("bad_numeric_date")
            _check_window(fail, now, exp=exp)
        return TxnSubject(
            namespace=workload.subject_namespace or workload.client_id,
            sub=_subject_of(claims, fail),
            claims=claims,
            exp=exp,
        )


def _check_window(
    fail: Callable[[str], SubjectTokenInvalid],
    now: float,
    *,
    exp: int,
    iat: int | None = None,
    nbf: int | None = None,
) -> None:
    if now >= exp + ASSERTION_LEEWAY:
        raise fail("expired")
    if nbf is not None and now < nbf - ASSERTION_LEEWAY:
        raise fail("not_yet_valid")
    if iat is not None:
        if iat > now + ASSERTION_LEEWAY:
            raise fail("issued_in_future")
        # §11.2.1: "the TTS may reject self-signed tokens with an iat value that is unreasonably far
        # in the past": no longer-lived than the longest token we mint.
        if exp - iat > MAX_TOKEN_LIFETIME:
            raise fail("lifetime_too_long")


def _subject_of(claims: Mapping[str, Any], fail: Callable[[str], SubjectTokenInvalid]) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 1024:
        raise fail("missing_sub")
    return sub


def _added(kept: Mapping[str, Any], offered: Mapping[str, Any], claim: str) -> dict[str, Any]:
    """A replacement's context: everything the replaced token asserted, plus new members (§13.15: it
    MAY add asserted values, MUST NOT change them)."""
    for name, value in offered.items():
        if name in kept and not same(kept[name], value):
            raise _deny("txn_context_conflict", f"a replacement may add to {claim}, never change it")
    return {**kept, **offered}


def _deny(code: str, description: str, error: str = "invalid_request") -> DenialError:
    return DenialError(Denial(code=code, description=description, error=error))
