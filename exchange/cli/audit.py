"""`exchange audit list|export|stats`: search, follow and count the audit trail.

The trail's order is `seq`, the sequence number the store assigns in commit order (docs/OPERATIONS.md,
"Audit trail"): `list` pages backwards with `--before SEQ`, `export` follows forwards from `--after SEQ`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from exchange.cli.console import config_option, json_option, run, settings_or_exit
from exchange.cli.output import emit_lines, note, table, utc, utc_seconds
from exchange.store.base import AuditFilter, Store
from schemas.config import Settings
from schemas.output import AuditCountLine, AuditLine, AuditRule, DenialCountLine
from schemas.records import AuditRecord

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_PAGE = 10_000


def parse_when(text: str, *, now: float | None = None) -> float:
    """A point in time as epoch seconds: UTC ISO 8601 with an explicit zone (`2026-11-29T10:00:00Z`)
    or an age (`90s`, `15m`, `1h`, `2d`, `1w`: that long before now). ValueError otherwise."""
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return (time.time() if now is None else now) - int(relative.group(1)) * _UNIT_SECONDS[
            relative.group(2)
        ]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a UTC time like 2026-11-29T10:00:00Z nor an age like 1h"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: write it in UTC with Z, e.g. {text}Z")
    return when.timestamp()


def _when(_: click.Context, param: click.Parameter, value: str | None) -> float | None:
    try:
        return None if value is None else parse_when(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def filter_options(command: F) -> F:
    """The filters `list` and `stats` share; each must match exactly."""
    options = [
        click.option("--sub", default=None, help="Only records of this subject (`sub` claim)."),
        click.option("--client", "client_id", default=None, help="Only records of this client_id."),
        click.option("--purpose", default=None, help="Only records of this purpose."),
        click.option(
            "--decision",
            type=click.Choice(["granted", "denied"]),
            default=None,
            help="Only granted or only denied exchanges.",
        ),
        click.option("--denial", default=None, help="Only denials with this code, e.g. mfa_required."),
        click.option("--request-id", default=None, help="Only the record(s) of this request id."),
        click.option("--jti", default=None, help="Only the record of the token with this jti."),
        click.option("--txn", default=None, help="Only the records of this transaction (Txn-Tokens)."),
        click.option(
            "--since",
            metavar="TIME",
            callback=_when,
            help="From this time on (inclusive): UTC like 2026-11-29T10:00:00Z, or an age like 1h, 2d.",
        ),
        click.option(
            "--until",
            metavar="TIME",
            callback=_when,
            help="Before this time (exclusive); same forms as --since.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _where(params: dict[str, Any]) -> AuditFilter:
    return AuditFilter(**{name: params.pop(name) for name in AuditFilter.__dataclass_fields__})


def audit_line(r: AuditRecord) -> AuditLine:
    """A stored record in the JSON convention (every field, UTC times with Z)."""
    assert r.seq is not None, "records read back from the store carry their seq"
    return AuditLine(
        seq=r.seq,
        time=utc(r.time) or "",
        request_id=r.request_id,
        decision=r.decision,
        client_id=r.client_id,
        issuer=r.issuer,
        sub=r.sub,
        purpose=r.purpose,
        audience=r.audience,
        error=r.error,
        denial=r.denial,
        reason=r.reason,
        jti=r.jti,
        exp=utc(r.exp),
        actor=r.actor,
        txn=r.txn,
        rules=[AuditRule(rule=o.rule, outcome=o.outcome, code=o.code) for o in r.rules],
        trace_id=r.trace_id,
    )


async def with_store(settings: Settings, use: Callable[[Store], Any]) -> Any:
    """Open the configured store, run `use(store)`, close it."""
    from exchange.store import open_store

    store = await open_store(settings.store)
    try:
        return await use(store)
    finally:
        await store.close()


@click.group()
def audit() -> None:
    """Search, follow and count the audit trail."""


@audit.command("list")
@config_option
@filter_options
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(1, MAX_PAGE),
    help=f"Records per page (at most {MAX_PAGE}); when more match, the next page's --before is printed.",
)
@click.option(
    "--before",
    type=click.IntRange(min=1),
    default=None,
    help="Page cursor: only records with seq below this.",
)
@json_option
def audit_list(
    config_file: str | None, limit: int, before: int | None, as_json: bool, **filters: Any
) -> None:
    """Show matching audit records, newest first, a page at a time."""
    settings = settings_or_exit(config_file)
    where = _where(filters)
    # One more than the page: whether more rows match is known, never guessed.
    records: list[AuditRecord] = run(
        lambda: with_store(settings, lambda s: s.list_audit(where, limit=limit + 1, before=before))
    )
    page, more = records[:limit], len(records) > limit
    if as_json:
        emit_lines(audit_line(r) for r in page)
    else:
        table(
            ["SEQ", "TIME", "DECISION", "CLIENT", "PURPOSE", "SUB", "DETAIL"],
            (
                [r.seq, utc_seconds(r.time), r.decision, r.client_id, r.purpose, r.sub, _detail(r)]
                for r in page
            ),
            widths=[None, None, None, 24, 28, 28, None],
        )
    if more:
        note(f"more rows: use --before {page[-1].seq} (with the same filters) for the next page")


def _detail(r: AuditRecord) -> str:
    if r.decision == "granted":
        return f"jti={r.jti}"
    why = r.denial or r.reason
    return f"{r.error}: {why}" if why else str(r.error)


@audit.command("export")
@config_option
@click.option(
    "--after",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Cursor: start after this seq (the last one you processed; 0 = from the beginning).",
)
@click.option("--follow", is_flag=True, help="Keep running and print new records as they are committed.")
@click.option(
    "--interval",
    type=click.FloatRange(0.05, 3600),
    default=1.0,
    show_default=True,
    help="With --follow: seconds between looks for new records.",
)
@click.option(
    "--batch",
    type=click.IntRange(1, MAX_PAGE),
    default=500,
    show_default=True,
    help="Records read per query.",
)
def audit_export(config_file: str | None, after: int, follow: bool, interval: float, batch: int) -> None:
    """Stream audit records as JSON Lines, oldest first, for a SIEM to follow.

    Always JSON Lines (the one convention: every field, UTC times with Z). Each line has its `seq`;
    a consumer stores the last seq it processed and resumes with `--after SEQ`: nothing is lost or
    repeated (see docs/OPERATIONS.md, "Audit trail"). SIGINT or SIGTERM stops it between records.
    """
    settings = settings_or_exit(config_file)

    async def go(store: Store) -> tuple[int, int]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        cursor, count = after, 0
        try:
            while not stop.is_set():
                records = await store.export_audit(after=cursor, limit=batch)
                for r in records:
                    emit_lines([audit_line(r)])
                    cursor, count = r.seq or cursor, count + 1
                if len(records) == batch:
                    continue  # behind: read on at once
                if not follow:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        return cursor, count

    try:
        cursor, count = run(lambda: with_store(settings, go))
    except BrokenPipeError:  # the reader went away (`| head`): not an error of ours
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    note(f"exported {count} record(s); resume with --after {cursor}")


@audit.command("stats")
@config_option
@filter_options
@json_option
def audit_stats(config_file: str | None, as_json: bool, **filters: Any) -> None:
    """Count matching audit records by outcome: decision, OAuth error and denial code."""
    settings = settings_or_exit(config_file)
    where = _where(filters)
    counts = run(lambda: with_store(settings, lambda s: s.count_audit(where)))
    if as_json:
        emit_lines(
            AuditCountLine(decision=c.decision, error=c.error, denial=c.denial, count=c.count) for c in counts
        )
        return
    table(
        ["COUNT", "DECISION", "ERROR", "DENIAL"],
        ([c.count, c.decision, c.error, c.denial] for c in counts),
        widths=[None, None, None, None],
    )
    click.echo(f"total {sum(c.count for c in counts)}")


@audit.command("unauthenticated")
@config_option
@click.option(
    "--since",
    metavar="TIME",
    callback=_when,
    default="1d",
    show_default=True,
    help="Windows from this time on: UTC like 2026-11-29T10:00:00Z, or an age like 1h, 2d.",
)
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(1, MAX_PAGE),
    help=f"Rows to show (at most {MAX_PAGE}), newest window first, biggest count first.",
)
@json_option
def audit_unauthenticated(config_file: str | None, since: float, limit: int, as_json: bool) -> None:
    """Show the counts of refusals before client authentication (unknown clients, bad secrets or
    assertions, malformed requests): per window, reason, client_id as given and source address.

    Such callers are counted, not recorded one by one (docs/ARCHITECTURE.md, "Audit"); `<any other>`
    marks what was folded when a window saw more distinct keys than `[audit] tally_keys`.
    """
    settings = settings_or_exit(config_file)
    counts = run(lambda: with_store(settings, lambda s: s.list_denial_counts(since=since, limit=limit + 1)))
    page, more = counts[:limit], len(counts) > limit
    if as_json:
        emit_lines(
            DenialCountLine(
                window_start=utc(c.window_start) or "",
                window_seconds=c.window_seconds,
                count=c.count,
                error=c.error,
                reason=c.reason,
                client_id=c.client_id,
                source=c.source,
            )
            for c in page
        )
    else:
        table(
            ["WINDOW", "SECONDS", "COUNT", "ERROR", "REASON", "CLIENT", "SOURCE"],
            (
                [
                    utc_seconds(c.window_start),
                    c.window_seconds,
                    c.count,
                    c.error,
                    c.reason,
                    c.client_id,
                    c.source,
                ]
                for c in page
            ),
            widths=[None, None, None, None, 40, 28, None],
        )
    if more:
        note(f"more rows: raise --limit (now {limit}) or narrow --since")
