"""Rules about when and how often: `time_window` and `rate_limit`."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rules.context import Allow, Deny, RuleContext
from rules.rule import Rule, Scope, Stage
from schemas.rules import ALL_WEEKDAYS, RateLimitRule, TimeWindowRule


@dataclass(frozen=True, slots=True)
class TimeWindowCheck:
    days: frozenset[str]
    start: int  # minutes after local midnight, inclusive
    end: int  # minutes after local midnight, exclusive; end < start spans midnight
    zone: ZoneInfo
    spec: str
    code: str
    stage: Stage = Stage.PURE
    label: str = "time_window"

    def describe(self) -> str:
        days = ", ".join(d for d in ALL_WEEKDAYS if d in self.days)
        return f"only on {days}, {self.spec} ({self.zone.key})"

    async def check(self, ctx: RuleContext) -> Allow | Deny:
        local = datetime.fromtimestamp(ctx.now, self.zone)
        minute = local.hour * 60 + local.minute
        if self.start < self.end:
            in_hours = self.start <= minute < self.end
        else:
            in_hours = minute >= self.start or minute < self.end
        # The day is the local calendar day of the request, also for windows that span midnight.
        if in_hours and ALL_WEEKDAYS[local.weekday()] in self.days:
            return Allow()
        return Deny(self.code, f"this purpose is available {self.describe()}")


def _minutes(text: str, scope: Scope, *, end: bool) -> int | None:
    hours, minutes = int(text[:2]), int(text[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not end)):
        scope.problem(f"hours: {text!r} is not a time of day (00:00 to 23:59, or 24:00 as the end)")
        return None
    return hours * 60 + minutes


def compile_time_window(cfg: TimeWindowRule, scope: Scope) -> Rule | None:
    try:
        zone = ZoneInfo(cfg.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        scope.problem(f"timezone {cfg.timezone!r} is not a known IANA time zone (e.g. Europe/Paris)")
        return None
    start_text, end_text = cfg.hours.split("-")
    start, end = _minutes(start_text, scope, end=False), _minutes(end_text, scope, end=True)
    if start is None or end is None:
        return None
    if start == end:
        scope.problem(f"hours {cfg.hours!r} is an empty window")
        return None
    return TimeWindowCheck(
        frozenset(cfg.days), start, end, zone, cfg.hours, cfg.code or "outside_time_window"
    )


@dataclass(frozen=True, slots=True)
class RateLimitCheck:
    max: int
    per: int
    key: str
    code: str
    # Counting is a side effect meant for grants only: the engine runs this after every other rule.
    stage: Stage = Stage.COUNT

    @property
    def label(self) -> str:
        return f"rate_limit[{self.key}]"

    def describe(self) -> str:
        who = "subject" if self.key == "sub" else "client"
        return f"at most {self.max} tokens per {who} per {self.per} seconds"

    def counter_key(self, ctx: RuleContext) -> str | None:
        """The shared counter's name: hashed, so the store holds no subject identifiers."""
        if self.key == "sub":
            if ctx.sub is None:
                return None
            identity = f"sub\0{ctx.issuer}\0{ctx.sub}"
        else:
            identity = f"client\0{ctx.client_id}"
        # `per` is part of the name: two limits with different windows never share a count.
        material = f"{ctx.purpose}\0{self.per}\0{identity}".encode()
        return "rate_limit:" + hashlib.sha256(material).hexdigest()

    async def check(self, ctx: RuleContext) -> Allow | Deny:
        key = self.counter_key(ctx)
        if key is None:
            return Deny(self.code, "the subject token has no sub to count tokens against")
        if ctx.dry_run:
            return Allow()
        if ctx.store is None:
            raise RuntimeError("rate_limit needs a store")
        window_start = int(ctx.now // self.per) * self.per
        window_end = window_start + self.per
        count = await ctx.store.increment_counter(key, window_start, float(window_end))
        if count > self.max:
            # The count starts again with the next window: that is when a retry can succeed.
            retry_after = max(1, math.ceil(window_end - ctx.now))
            return Deny(self.code, f"rate limit reached: {self.describe()}", retry_after=retry_after)
        return Allow()


def compile_rate_limit(cfg: RateLimitRule, scope: Scope) -> Rule | None:
    return RateLimitCheck(cfg.max, cfg.per, cfg.key, cfg.code or "rate_limited")
