"""Readiness, told truthfully: what answers, what is degraded, and whether this replica should get traffic.

`/healthz` only says the process answers (restart it if not). `/readyz` checks what an exchange needs:
the store answers now, a signing key is loaded, and each trusted issuer's keys are fresh or still
within their staleness bound. The body names every check and what is wrong with it.

Status, and the HTTP code that routes traffic:
- `ready` (200): every check is ok;
- `degraded` (200): the replica still exchanges tokens, but something needs an operator (an issuer's
  JWKS cannot be refreshed, or even has no usable keys: its users are refused while others are
  served). A load balancer should keep sending traffic: every replica shares the identity
  provider, so taking this one out would only turn a partial outage into a total one;
- `unavailable` (503): the store does not answer, no signing key is loaded, or no trusted issuer has
  usable keys: no exchange can succeed here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence

import msgspec

from exchange.verify.jwks import JWKSCache, KeySource
from schemas.wire import HealthCheck, Readiness

Check = HealthCheck  # one named check: the wire type of /readyz (schemas/wire.py)


def http_status(readiness: Readiness) -> int:
    return 503 if readiness.status == "unavailable" else 200


_encode = msgspec.json.Encoder().encode


def verdict(core: Sequence[Check], issuers: Sequence[Check] = ()) -> Readiness:
    """Any core check down, or every issuer down, makes the replica unavailable; anything else that is
    not ok degrades it (the module docstring says why)."""
    checks = [*core, *issuers]
    if any(c.status == "down" for c in core) or (issuers and all(c.status == "down" for c in issuers)):
        return Readiness(status="unavailable", checks=checks)
    if any(c.status != "ok" for c in checks):
        return Readiness(status="degraded", checks=checks)
    return Readiness(status="ready", checks=checks)


def issuer_checks(sources: Mapping[str, KeySource]) -> list[Check]:
    """One check per trusted issuer: ok while its keys are fresh; degraded while they cannot be
    refreshed (still usable within their staleness bound, or none at hand yet); down once none may be used."""
    return [_issuer_check(name, source) for name, source in sources.items()]


def _issuer_check(name: str, source: KeySource) -> Check:
    where = f"issuer {name}"
    if not isinstance(source, JWKSCache):
        return Check(name=where, status="ok", detail="keys from a file")
    s = source.state()
    fetched = "never fetched" if s.last_success_age is None else f"fetched {s.last_success_age:.0f} s ago"
    if s.state == "fresh" and s.last_error is None:
        return Check(name=where, status="ok", detail=f"{s.kids} keys, {fetched}")
    if s.state == "fresh":
        return Check(
            name=where,
            status="degraded",
            detail=f"the last JWKS fetch failed ({s.last_error}); keys {fetched} are fresh for "
            f"{s.fresh_for:.0f} s more",
        )
    if s.state == "stale":
        return Check(
            name=where,
            status="degraded",
            detail=f"the JWKS cannot be refreshed ({s.last_error or 'refresh pending'}); using keys "
            f"{fetched}, for {s.usable_for:.0f} s more at most",
        )
    if s.last_error is None:
        return Check(name=where, status="degraded", detail="the JWKS has not been fetched yet")
    return Check(
        name=where,
        status="down",
        detail=f"no usable keys: the JWKS at {source.uri} cannot be fetched ({s.last_error}); "
        "its tokens are refused",
    )


async def store_check(ping: Callable[[], Awaitable[None]], within: float) -> Check:
    try:
        async with asyncio.timeout(within):
            await ping()
    except Exception as exc:  # unreachable, timed out, refused: all mean "no exchange can be audited"
        return Check(name="store", status="down", detail=f"the store does not answer ({type(exc).__name__})")
    return Check(name="store", status="ok")


def body(readiness: Readiness) -> bytes:
    return _encode(readiness)
