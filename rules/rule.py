"""The shape every compiled rule has, and the scope a rule is compiled in.

A rule's parameters are checked once, at start-up (`compile`), so evaluation never meets a bad regex or
an unknown time zone; every problem found is collected with the key that caused it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Protocol

from rules.context import Allow, Deny, RuleContext

if TYPE_CHECKING:
    from rules.details import DetailsSchema
    from schemas.config import Settings


class Stage(IntEnum):
    """When a rule runs. Rules keep their configured order within a stage; stages run in this order.

    PURE rules only read the context (cheap, no I/O); IO rules may await the network or the database
    (python rules); COUNT rules have side effects that must only happen for an otherwise granted
    request (rate_limit counts grants), so they run last.
    """

    PURE = 0
    IO = 1
    COUNT = 2


class Rule(Protocol):
    """A compiled rule: `label` names it in audit records ("claim[roles]"), `describe()` for humans."""

    @property
    def label(self) -> str: ...

    @property
    def stage(self) -> Stage: ...

    def describe(self) -> str: ...

    async def check(self, ctx: RuleContext) -> Allow | Deny: ...


@dataclass
class Scope:
    """Where a rule is being compiled: its key (for messages), its purpose and the settings."""

    purpose: str
    settings: Settings
    details: DetailsSchema
    problems: list[str] = field(default_factory=list)
    where: str = ""

    def problem(self, message: str) -> None:
        self.problems.append(f"{self.where}: {message}")

    def regex(self, pattern: str, what: str) -> re.Pattern[str] | None:
        """Compile a configured pattern, reporting (not raising) when it is invalid."""
        try:
            return re.compile(pattern)
        except re.error as exc:
            self.problem(f"{what} {pattern!r} is not a valid regular expression ({exc})")
            return None


def purpose_key(purpose: str) -> str:
    """The TOML key of a purpose, as an operator would search for it in the file."""
    return f'purposes."{purpose}"'
