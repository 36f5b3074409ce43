"""The `python` rule: an operator's async function, imported once at start-up, run with a timeout.

Python rules are trusted code (they run in the exchange's process), but not trusted to be correct:
an exception, a timeout or a return value other than Allow/Deny denies the request (fail closed).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rules.context import Allow, Deny, RuleContext
from rules.rule import Rule, Scope, Stage
from schemas.rules import PythonRule

RuleFunction = Callable[[RuleContext], Awaitable[Allow | Deny]]


@dataclass(frozen=True, slots=True)
class PythonCheck:
    function: str
    func: RuleFunction
    timeout: float
    stage: Stage = Stage.IO

    @property
    def label(self) -> str:
        return f"python[{self.function}]"

    def describe(self) -> str:
        doc = inspect.getdoc(self.func)
        summary = doc.splitlines()[0] if doc else "custom rule"
        return f"{self.function}: {summary}"

    async def check(self, ctx: RuleContext) -> Allow | Deny:
        async with asyncio.timeout(self.timeout):
            result = await self.func(ctx)
        if isinstance(result, Allow | Deny):
            return result
        raise TypeError(f"{self.function} returned {type(result).__name__}, not Allow or Deny")


def load_function(reference: str) -> RuleFunction:
    """Import `package.module:function`; raises ValueError with an operator-readable reason."""
    module_name, _, attr = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of operator code is a config problem
        raise ValueError(f"cannot import {module_name!r} ({type(exc).__name__}: {exc})") from exc
    func = getattr(module, attr, None)
    if func is None:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
    if not inspect.iscoroutinefunction(func):
        raise ValueError(f"{reference} must be an async function (async def {attr}(ctx))")
    try:
        inspect.signature(func).bind(object())
    except TypeError:
        raise ValueError(f"{reference} must take exactly one argument, the RuleContext") from None
    except ValueError:  # a builtin without a signature cannot be an async def; keep the message clear
        raise ValueError(f"{reference} has no inspectable signature") from None
    return func  # type: ignore[no-any-return]


def compile_python(cfg: PythonRule, scope: Scope) -> Rule | None:
    try:
        func = load_function(cfg.function)
    except ValueError as exc:
        scope.problem(str(exc))
        return None
    return PythonCheck(cfg.function, func, cfg.timeout)
