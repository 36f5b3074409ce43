"""The token exchange, step by step: parse → authenticate the client → trust the subject token →
delegation and details → rules → mint → audit → respond.

A Txn-Token request (requested_token_type ...:txn_token, draft-ietf-oauth-transaction-tokens-10 §11)
takes the same steps, with the TTS's own decisions from exchange/txn.py: the requesting workload, the
trust domain as audience, the subject by its kind (incl. a Txn-Token to replace), tctx and rctx in place
of delegation and details; then the same rules, minting with the same key, the same audit (with `txn`).

The client is authenticated before the subject token is looked at, so an unauthenticated caller
cannot use the endpoint as an oracle for identity tokens. Every outcome of an authenticated client,
granted or denied, is audited before the answer leaves; if the audit cannot be committed the token is
dropped and the client gets 503. A caller refused before it authenticated is counted instead
(`DenialTally`): it is nobody yet, and recording each of its refusals would let anyone grow the trail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from time import perf_counter
from typing import TYPE_CHECKING, Any

import msgspec

from exchange.audit import Auditor, DenialTally
from exchange.clients import presented_credentials
from exchange.errors import (
    ERROR_CODES,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    RateLimited,
    ServerError,
    SubjectTokenInvalid,
    TemporarilyUnavailable,
    UnauthorizedClient,
    UnsupportedGrantType,
    error_class,
)
from exchange.logging import RequestLine
from exchange.store.base import Store, StoreUnavailable
from exchange.telemetry import AUDIT, CLIENT_AUTH, MINT, RULES, TRUST, ServiceMetrics, Steps
from exchange.tokens import Minter
from exchange.txn import TransactionTokens
from rules import Denial, DenialError, PurposePolicy, RuleContext, actor_chain
from rules.denials import STORE_UNAVAILABLE
from schemas.config import Client
from schemas.records import AuditRecord, RuleOutcome
from schemas.wire import (
    GRANT_TOKEN_EXCHANGE,
    ISSUED_TOKEN_TYPES,
    SUBJECT_TOKEN_TYPES,
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_TXN_TOKEN,
    TXN_SUBJECT_TOKEN_TYPES,
    TokenRequest,
    TokenResponse,
)

if TYPE_CHECKING:
    from exchange.reload import Configured
    from exchange.tracing import RequestTrace

# The decision's one canonical line (issue 11), written before the answer is sent: by the audit writer
# for a recorded decision (with its batch's, in one write), else here.
_line = RequestLine("exchange.audit", immediate=True)


@dataclass(slots=True)
class _Draft:
    """What is known so far about this request, for its audit record."""

    client_id: str | None = None
    issuer: str | None = None
    sub: str | None = None
    purpose: str | None = None
    audience: str | None = None
    actor: str | None = None
    jti: str | None = None
    exp: int | None = None
    txn: str | None = None
    rules: tuple[RuleOutcome, ...] = ()
    trace_id: str | None = None
    # Set once the client authenticated: from then on each outcome is recorded one by one.
    authenticated: bool = False

    def record(self, now: float, request_id: str, failure: OAuthError | None) -> AuditRecord:
        decision: dict[str, Any] = {"decision": "granted"}
        if failure is not None:
            decision = {
                "decision": "denied",
                "error": failure.error,
                "denial": failure.denial,
                "reason": failure.reason,
            }
        return AuditRecord(
            time=now,
            request_id=request_id,
            client_id=self.client_id,
            issuer=self.issuer,
            sub=self.sub,
            purpose=self.purpose,
            audience=self.audience,
            actor=self.actor,
            jti=self.jti,
            exp=self.exp,
            txn=self.txn,
            rules=list(self.rules),
            trace_id=self.trace_id,
            **decision,
        )


class TokenExchange:
    def __init__(
        self,
        *,
        configured: Configured,
        minter: Minter,
        auditor: Auditor,
        tally: DenialTally,
        store: Store,
        clock: Callable[[], float] = time.time,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        #: Trust, clients and policies, replaced whole by a reload (exchange/reload.py): each request
        #: reads it once, and finishes on the configuration it started with.
        self.configured = configured
        self._minter = minter
        self._auditor = auditor
        self._tally = tally
        self._store = store
        self._clock = clock
        self._metrics = metrics

    async def handle(
        self,
        request: TokenRequest,
        authorization: str | None,
        request_id: str,
        *,
        source: str | None = None,
        trace: RequestTrace | None = None,
    ) -> TokenResponse:
        """Answer one token request, or raise the OAuthError to send; audited either way (counted, for
        a caller refused before it authenticated; `source` is its address)."""
        now = self._clock()
        series = None if self._metrics is None else self._metrics.step_series
        steps = Steps(series) if trace is None else trace.steps(series)
        draft = _Draft(
            client_id=_bounded(request.client_id), trace_id=None if trace is None else trace.trace_id
        )
        response: TokenResponse | None = None
        failure: OAuthError | None = None
        cause: Exception | None = None
        configured = self.configured  # one configuration for the whole request, even across a reload
        try:
            response = await self._exchange(configured, request, authorization, now, draft, steps)
        except OAuthError as exc:
            failure = exc
        except StoreUnavailable as exc:
            failure = TemporarilyUnavailable("the service is temporarily unavailable", reason=str(exc))
            self._store_error("exchange")
        except Exception as exc:  # a bug is not a decision, but it is still denied, and still audited
            failure = ServerError("internal error", reason=f"crash:{exc.__class__.__name__}")
            cause = exc
        record = draft.record(now, request_id, failure)
        logged = False
        try:
            with steps(AUDIT):
                if draft.authenticated:
                    # The line is written by the audit writer once the record is committed, with the
                    # lines of its batch in one write, before this request (or any of them) resumes.
                    await self._auditor.record(record, partial(self._line, record, failure, steps))
                    logged = True
                else:
                    assert failure is not None, "no token without an authenticated client"
                    named = record.client_id is not None and configured.clients.get(record.client_id)
                    self._tally.count(record, source, configured_client=bool(named))
        except StoreUnavailable as exc:
            # No answer, and above all no token, leaves without its committed audit record.
            failure = TemporarilyUnavailable("the service is temporarily unavailable", reason=str(exc))
            draft.jti = draft.exp = None
            record = draft.record(now, request_id, failure)
        self._done(record, failure, steps, trace, logged=logged)
        if failure is not None:
            raise failure from cause
        assert response is not None
        return response

    def _done(
        self,
        record: AuditRecord,
        failure: OAuthError | None,
        steps: Steps,
        trace: RequestTrace | None,
        *,
        logged: bool,
    ) -> None:
        """The request's metrics and trace, and its one canonical log line unless `logged` already,
        once its outcome is final."""
        if self._metrics is not None:
            outcome = "granted" if failure is None else failure.error
            self._metrics.exchange_done(record.purpose, record.client_id, outcome, record.denial, steps)
            if record.denial == STORE_UNAVAILABLE:
                self._store_error("rules")
        if not logged:
            self._line(record, failure, steps)
        if trace is not None:
            trace.annotate(
                {
                    "exchange.request_id": record.request_id,
                    "exchange.client_id": record.client_id,
                    "exchange.purpose": record.purpose,
                    "exchange.decision": record.decision,
                    "exchange.error": record.error,
                    "exchange.denial": record.denial,
                }
            )
            trace.end(200 if failure is None else failure.status)

    @staticmethod
    def _line(record: AuditRecord, failure: OAuthError | None, steps: Steps) -> None:
        """The decision's one canonical line: the record's fields, the status and the duration."""
        fields: dict[str, Any] = msgspec.to_builtins(record)  # omit_defaults: no empty fields
        del fields["time"]  # the log line has its own timestamp
        fields["status"] = 200 if failure is None else failure.status
        fields["duration_ms"] = round((perf_counter() - steps.started) * 1000, 3)
        _line.emit("token_issued" if failure is None else "exchange_denied", fields)

    def _store_error(self, operation: str) -> None:
        if self._metrics is not None:
            self._metrics.store_errors.inc((operation,))

    async def _exchange(
        self,
        configured: Configured,
        request: TokenRequest,
        authorization: str | None,
        now: float,
        draft: _Draft,
        steps: Steps,
    ) -> TokenResponse:
        if request.grant_type is None:
            raise InvalidRequest("grant_type is required")
        if request.grant_type != GRANT_TOKEN_EXCHANGE:
            raise UnsupportedGrantType("only the token-exchange grant type is supported")

        creds = presented_credentials(request, authorization)
        draft.client_id = _bounded(creds.client_id)
        with steps(CLIENT_AUTH):
            client = await configured.clients.authenticate(creds, request, now)
        draft.authenticated = True

        txn = configured.txn if request.requested_token_type == TOKEN_TYPE_TXN_TOKEN else None
        if request.requested_token_type == TOKEN_TYPE_TXN_TOKEN and txn is None:
            raise InvalidRequest("unsupported requested_token_type")
        if not request.subject_token:
            raise InvalidRequest("subject_token is required")
        if not request.subject_token_type:
            raise InvalidRequest("subject_token_type is required")
        if request.subject_token_type not in (TXN_SUBJECT_TOKEN_TYPES if txn else SUBJECT_TOKEN_TYPES):
            raise InvalidRequest("unsupported subject_token_type")
        if not request.scope:
            # RFC 6749 §3.3: we have no default scope, so a request without one "fails ... indicating an
            # invalid scope"; §5.2 names that error invalid_scope.
            raise InvalidScope("scope is required: name exactly one purpose")
        if len(request.scope.split()) != 1:
            raise InvalidScope("scope must name exactly one purpose")
        purpose = request.scope.strip()
        draft.purpose = _bounded(purpose)
        policy = configured.policies.get(purpose)
        if policy is None:
            raise InvalidScope("unknown purpose")
        if purpose not in client.purposes:
            raise UnauthorizedClient("this client may not request this purpose")
        if txn is not None:
            return await self._txn_token(txn, request, client, policy, now, draft, steps)
        requested = request.requested_token_type or TOKEN_TYPE_ACCESS_TOKEN
        if requested not in ISSUED_TOKEN_TYPES:
            raise InvalidRequest("unsupported requested_token_type")
        audience = self._audience(request, policy)
        draft.audience = audience

        with steps(TRUST):
            subject = await configured.trust.validate(
                request.subject_token, request.subject_token_type, presenter=client, now=now
            )
        draft.issuer, draft.sub = subject.issuer, str(subject.claims["sub"])

        actor_claims = None
        actor_issuer = None
        if request.actor_token is not None:
            if not request.actor_token_type or request.actor_token_type not in SUBJECT_TOKEN_TYPES:
                raise InvalidRequest("actor_token_type is missing or unsupported")
            with steps(TRUST):
                actor = await configured.trust.validate(
                    request.actor_token,
                    request.actor_token_type,
                    presenter=client,
                    which="actor_token",
                    now=now,
                )
            actor_claims, actor_issuer = actor.claims, actor.issuer
            draft.actor = f"{actor.issuer} {actor.claims['sub']}"
        elif request.actor_token_type is not None:
            raise InvalidRequest("actor_token_type given without actor_token")

        with steps(RULES):
            try:
                act = policy.check_delegation(
                    subject.claims, actor_claims, actor_issuer, client_id=client.client_id
                )
                details = policy.validate_details(request.authorization_details)
            except DenialError as exc:
                raise _denial_error(exc.denial) from None
            await self._judge(
                policy,
                RuleContext(
                    subject=subject.claims,
                    issuer=subject.issuer,
                    client_id=client.client_id,
                    purpose=purpose,
                    audience=audience,
                    details=details,
                    actor_chain=actor_chain(act),
                    now=now,
                    store=self._store,
                ),
                draft,
            )

        with steps(MINT):
            claims = self._minter.claims(
                subject=subject.claims,
                subject_issuer=subject.issuer,
                audience=audience,
                client_id=client.client_id,
                purpose=purpose,
                ttl=policy.ttl,
                now=now,
                details=details,
                act=act,
                single_use=policy.single_use,
            )
            if claims.exp <= int(now):
                raise SubjectTokenInvalid("expires_now")
            signed = self._minter.sign(claims)
        draft.jti, draft.exp = claims.jti, claims.exp
        return TokenResponse(
            access_token=signed,
            issued_token_type=requested,
            token_type="Bearer",
            expires_in=claims.exp - int(now),
            scope=purpose,
            # RFC 9396 §7: the token response carries the authorization_details that were granted.
            authorization_details=claims.authorization_details,
        )

    async def _txn_token(
        self,
        txn: TransactionTokens,
        request: TokenRequest,
        client: Client,
        policy: PurposePolicy,
        now: float,
        draft: _Draft,
        steps: Steps,
    ) -> TokenResponse:
        """A Txn-Token (draft §11): the TTS's checks, then the purpose's rules, then mint (§11.4)."""
        mapping = policy.txn
        if mapping is None:
            raise InvalidRequest("this purpose does not issue Txn-Tokens")
        if request.actor_token is not None or request.actor_token_type is not None:
            raise InvalidRequest("a Txn-Token request takes no actor_token")
        if request.authorization_details is not None:
            raise InvalidRequest("a Txn-Token request carries its details in request_details")
        assert request.subject_token_type is not None  # checked by _exchange
        workload = txn.workload(client, request.subject_token_type)
        draft.audience = txn.audience(request)
        with steps(TRUST):
            subject = await txn.subject(request, workload, client, now)
        draft.issuer, draft.sub = subject.namespace, subject.sub
        if subject.replacing is not None:
            draft.txn = subject.replacing.txn
        with steps(RULES):
            try:
                tctx, rctx = txn.grant(mapping, request, subject)
            except DenialError as exc:
                raise _denial_error(exc.denial) from None
            await self._judge(
                policy,
                RuleContext(
                    subject=subject.claims,
                    issuer=subject.namespace,
                    client_id=client.client_id,
                    purpose=policy.name,
                    audience=txn.trust_domain,
                    details=mapping.details(tctx),
                    now=now,
                    store=self._store,
                ),
                draft,
            )
        with steps(MINT):
            claims = self._minter.txn_claims(
                trust_domain=txn.trust_domain,
                namespace=subject.namespace,
                sub=subject.sub,
                purpose=policy.name,
                workload=client.client_id,
                ttl=mapping.ttl or txn.ttl,
                now=now,
                not_after=subject.exp,
                tctx=tctx,
                rctx=rctx,
                replacing=subject.replacing,
            )
            if claims.exp <= int(now):
                raise SubjectTokenInvalid("expires_now")
            signed = self._minter.sign(claims)
        draft.jti, draft.exp, draft.txn = claims.jti, claims.exp, claims.txn
        # §11.4: token_type N_A (RFC 8693 §2.2.1: not an access token), never a refresh token.
        return TokenResponse(
            access_token=signed,
            issued_token_type=TOKEN_TYPE_TXN_TOKEN,
            token_type="N_A",
            expires_in=claims.exp - int(now),
            scope=policy.name,
        )

    @staticmethod
    async def _judge(policy: PurposePolicy, ctx: RuleContext, draft: _Draft) -> None:
        """The purpose's rules on this request; their outcomes go to the audit record. Raises the denial."""
        decision = await policy.evaluate(ctx)
        draft.rules = tuple(decision.outcomes)
        if not decision.allowed:
            assert decision.denial is not None
            raise _denial_error(decision.denial)

    @staticmethod
    def _audience(request: TokenRequest, policy: PurposePolicy) -> str:
        """RFC 8693 `audience` and `resource` both name the target; together they must name one."""
        asked = set(request.audience) | set(request.resource)
        if not policy.audiences:
            raise InvalidTarget("this purpose issues Txn-Tokens only")
        if not asked:
            if len(policy.audiences) == 1:
                return policy.audiences[0]
            raise InvalidTarget("this purpose has several audiences: name one with audience or resource")
        if len(asked) > 1:
            raise InvalidTarget("a purpose token has exactly one audience")
        (target,) = asked
        if target not in policy.audiences:
            raise InvalidTarget("audience not allowed for this purpose")
        return target


def _denial_error(denial: Denial) -> OAuthError:
    # An unknown error code from a python rule is still a denial, never a crash.
    cls = error_class(denial.error) if denial.error in ERROR_CODES else InvalidRequest
    if denial.retry_after is not None:
        cls = RateLimited
    return cls(
        denial.description,
        denial=denial.code,
        reason=f"denied:{denial.code}",
        acr_values=denial.acr_values,
        max_age=denial.max_age,
        retry_after=denial.retry_after,
    )


def _bounded(value: str | None, limit: int = 256) -> str | None:
    """Request-supplied text goes to the audit trail before it is validated: keep it short."""
    return value if value is None or len(value) <= limit else value[:limit] + "..."
