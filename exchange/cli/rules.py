"""`exchange rules explain`: why a purpose would grant or deny, rule by rule.

Three sources, exactly one per run:
- `--subject-token -` (the token on stdin; one on the command line is refused): the token is verified
  exactly as the exchange verifies it (the same `SubjectTrust` the service builds,
  `exchange.trust.subject_trust`); a refusal is shown with the reason the audit record would carry, and
  no rule runs;
- `--claims FILE`: a dry run on given claims, nothing verified;
- `--request-id ID`: a decision recorded in the audit trail, each recorded rule outcome beside what the
  rule demands today.
Nothing is counted (rate limits) and nothing is issued; python rules do run, read-only.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click
import msgspec

from exchange.cli.audit import MAX_PAGE, audit_line, with_store
from exchange.cli.console import config_option, fail, json_option, run, settings_or_exit
from exchange.cli.output import emit_object, table
from exchange.cli.verify import token_on_argv
from exchange.store.base import AuditFilter, Store
from exchange.text import printable
from rules import DenialError, PurposePolicy, RuleContext, actor_chain, compile_policies
from schemas.config import Settings
from schemas.output import Explanation, RuleLine
from schemas.records import AuditRecord
from schemas.wire import SUBJECT_TOKEN_TYPES, TOKEN_TYPE_ID_TOKEN


@click.group("rules")
def rules_group() -> None:
    """Inspect purpose policies."""


@rules_group.command("explain")
@config_option
@click.argument("purpose", required=False)
@click.option(
    "--subject-token",
    default=None,
    help="`-`: read an identity token from stdin, verify it as the exchange would, then explain (a token"
    " on the command line is refused: it would be in the shell history and the process list).",
)
@click.option(
    "--subject-token-type",
    type=click.Choice(sorted(SUBJECT_TOKEN_TYPES)),
    default=TOKEN_TYPE_ID_TOKEN,
    show_default=True,
    help="The subject_token_type a client would send with --subject-token.",
)
@click.option(
    "--claims",
    "claims_file",
    type=click.File("rb"),
    default=None,
    help="JSON file of subject claims for a dry run (- for stdin). Not a token: nothing is verified.",
)
@click.option(
    "--request-id",
    default=None,
    help="Explain the decision recorded in the audit trail for this request id (PURPOSE optional).",
)
@click.option(
    "--details",
    "details_file",
    type=click.File("rb"),
    default=None,
    help="JSON file of authorization_details to try.",
)
@click.option(
    "--client", "client_id", default=None, help="client_id to evaluate as; must be allowed the purpose."
)
@click.option("--audience", default=None, help="Audience to evaluate for (default: the purpose's first).")
@json_option
def rules_explain(
    config_file: str | None,
    purpose: str | None,
    subject_token: str | None,
    subject_token_type: str,
    claims_file: Any,
    request_id: str | None,
    details_file: Any,
    client_id: str | None,
    audience: str | None,
    as_json: bool,
) -> None:
    """Explain PURPOSE's rules for a verified token, given claims, or a recorded decision.

    Exit 0 when the rules allow (or a recorded decision was explained), 1 when they deny or the token
    is refused.
    """
    sources = [name for name, given in [("--subject-token", subject_token), ("--claims", claims_file),
                                         ("--request-id", request_id)] if given is not None]  # fmt: skip
    if len(sources) != 1:
        raise click.UsageError("give exactly one of --subject-token, --claims or --request-id")
    settings = settings_or_exit(config_file, with_policies=True)
    policies = compile_policies(settings)

    if request_id is not None:
        explanations = run(
            lambda: with_store(settings, lambda s: _recorded(s, policies, request_id, purpose))
        )
        if not explanations:
            fail(f"no audit record with request id {request_id!r}" + (f" for {purpose!r}" if purpose else ""))
        for explanation in explanations:
            _show(explanation, as_json)
        return

    if purpose is None:
        raise click.UsageError("PURPOSE is required with --subject-token or --claims")
    policy = policies.get(purpose)
    if policy is None:
        fail(f"unknown purpose {purpose!r}; known: {', '.join(sorted(settings.purposes))}")
    if audience is not None and audience not in policy.audiences:
        raise click.BadParameter(f"{audience!r} is not an audience of {purpose!r}", param_hint="--audience")
    try:
        details_raw = details_file.read().decode() if details_file else None
        claims = msgspec.json.decode(claims_file.read()) if claims_file is not None else None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None
    if claims is not None and not isinstance(claims, dict):
        raise click.BadParameter("the claims file must hold one JSON object", param_hint="--claims")
    if subject_token is not None and subject_token != "-":
        token_on_argv()
    token = sys.stdin.read().strip() if subject_token == "-" else None

    async def go(store: Store) -> Explanation:
        source = "claims" if claims is not None else "subject_token"
        subject, issuer = claims or {}, str((claims or {}).get("iss", "-"))
        if token is not None:
            from exchange.errors import IssuerKeysUnavailable, SubjectTokenInvalid
            from exchange.trust import subject_trust

            try:
                presenter = next((c for c in settings.clients if c.client_id == client_id), None)
                verified = await subject_trust(settings).validate(
                    token, subject_token_type, presenter=presenter, now=time.time()
                )
            except (SubjectTokenInvalid, IssuerKeysUnavailable) as exc:
                return _refused(source, policy, client_id, exc.reason or "subject_token:invalid")
            subject, issuer = dict(verified.claims), verified.issuer
        refusal = _client_refusal(settings, client_id, policy.name)
        if refusal is not None:
            return _refused(source, policy, client_id, refusal, issuer=issuer, sub=subject.get("sub"))
        try:
            act = policy.check_delegation(subject, None, None, client_id=client_id)
            details = policy.validate_details(details_raw)
        except DenialError as exc:
            return _refused(
                source, policy, client_id, f"denied:{exc.denial.code}", issuer, subject.get("sub")
            )
        ctx = RuleContext(
            subject=subject,
            issuer=issuer,
            client_id=client_id or "-",
            purpose=policy.name,
            # A purpose of Txn-Tokens only has no audience of its own: its tokens go to the trust domain.
            audience=audience or (policy.audiences[0] if policy.audiences else _trust_domain(settings)),
            details=details,
            actor_chain=actor_chain(act),
            now=time.time(),
            store=store,
        )
        decision, reports = await policy.explain(ctx)
        return Explanation(
            source=source,  # type: ignore[arg-type]
            purpose=policy.name,
            client_id=client_id,
            issuer=issuer,
            sub=_text(subject.get("sub")),
            refused=None,
            rules=[
                RuleLine(rule=r.label, requirement=r.requirement, outcome=r.outcome, code=r.code)
                for r in reports
            ],
            decision="allow" if decision.allowed else "deny",
            denial=decision.denial.code if decision.denial else None,
            recorded=None,
        )

    explanation = run(lambda: with_store(settings, go))
    _show(explanation, as_json)
    sys.exit(0 if explanation.decision == "allow" else 1)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _not_evaluated(policy: PurposePolicy) -> list[RuleLine]:
    return [
        RuleLine(rule=label, requirement=req, outcome="not evaluated", code=None)
        for label, req in policy.describe()
    ]


def _refused(
    source: str,
    policy: PurposePolicy,
    client_id: str | None,
    reason: str,
    issuer: str | None = None,
    sub: Any = None,
) -> Explanation:
    """Stopped before any rule ran, as the exchange would stop."""
    return Explanation(
        source=source,  # type: ignore[arg-type]
        purpose=policy.name,
        client_id=client_id,
        issuer=issuer,
        sub=_text(sub),
        refused=reason,
        rules=_not_evaluated(policy),
        decision="deny",
        denial=None,
        recorded=None,
    )


def _client_refusal(settings: Settings, client_id: str | None, purpose: str) -> str | None:
    """The exchange's client checks that need no credentials: known client, purpose allowed."""
    if client_id is None:
        return None
    client = next((c for c in settings.clients if c.client_id == client_id), None)
    if client is None:
        return "client:unknown_client"
    if purpose not in client.purposes:
        return "client:purpose_not_allowed"
    return None


async def _recorded(
    store: Store, policies: dict[str, PurposePolicy], request_id: str, purpose: str | None
) -> list[Explanation]:
    """Each recorded decision for this request id (ids come from clients and may repeat), oldest first."""
    records = await store.list_audit(AuditFilter(request_id=request_id, purpose=purpose), limit=MAX_PAGE)
    return [_explain_record(r, policies.get(r.purpose or "")) for r in reversed(records)]


def _explain_record(record: AuditRecord, policy: PurposePolicy | None) -> Explanation:
    current = policy.describe() if policy is not None else []
    lines: list[RuleLine] = []
    for index, outcome in enumerate(record.rules):
        # The same rule at the same place, else the same label anywhere: the policy may have changed.
        if index < len(current) and current[index][0] == outcome.rule:
            requirement = current[index][1]
        else:
            requirement = next((req for label, req in current if label == outcome.rule), "(no longer a rule)")
        lines.append(
            RuleLine(rule=outcome.rule, requirement=requirement, outcome=outcome.outcome, code=outcome.code)
        )
    lines += [
        RuleLine(rule=label, requirement=req, outcome="not evaluated", code=None)
        for label, req in current[len(lines) :]
    ]
    # A denial before the rules ran (client, token, request) has no rule outcomes: its reason says why.
    refused = record.reason if record.decision == "denied" and not record.rules else None
    return Explanation(
        source="audit",
        purpose=record.purpose or "-",
        client_id=record.client_id,
        issuer=record.issuer,
        sub=record.sub,
        refused=refused,
        rules=lines,
        decision=record.decision,
        denial=record.denial,
        recorded=audit_line(record),
    )


def _show(e: Explanation, as_json: bool) -> None:
    if as_json:
        emit_object(e)
        return
    # Subjects, clients and purposes may come from a request (a recorded decision): escaped for the terminal.
    if e.recorded is not None:
        r = e.recorded
        click.echo(
            printable(
                f"request {r.request_id} (seq {r.seq}) at {r.time}: {r.decision} for client "
                f"{r.client_id or '-'}, purpose {r.purpose or '-'}, sub {r.sub or '-'}"
            )
        )
    elif e.source == "claims":
        click.echo(printable(f"subject: {e.sub or '-'} from {e.issuer} (given claims: nothing verified)"))
    elif e.refused is None or e.issuer is not None:
        click.echo(printable(f"subject: {e.sub or '-'} from {e.issuer} (token verified)"))
    if e.refused is not None:
        click.echo(printable(f"refused before the rules: {e.refused}"))
    table(
        ["RULE", "OUTCOME", "CODE", "REQUIREMENT"],
        ([line.rule, line.outcome, line.code, line.requirement] for line in e.rules),
        widths=[None, None, None, None],
    )
    verdict = e.decision if e.denial is None else f"{e.decision}: {e.denial}"
    click.echo(f"decision: {verdict}")


def _trust_domain(settings: Settings) -> str:
    return settings.txn_tokens.trust_domain if settings.txn_tokens is not None else "-"
