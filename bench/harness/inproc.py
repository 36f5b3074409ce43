"""In-process costs (`exchange_bench.py --micro N`): the ASGI app the server runs, without the server.

The app comes from the factory granian runs (`exchange.app:app_from_env`) and is driven through the
ASGI interface only: lifespan start-up, then N requests per outcome, 64 in flight, CPU time per
request on the server's core. The outcomes stop at successive steps of the exchange, so the
difference between two rows is what the step between them costs, measured through the public face:

  GET /healthz                               framework floor (a litestar route)
  POST /token, wrong content type            the bare /token route's floor: refused before the body
  unsupported grant_type                     + body read, form parsing, orchestration, audit commit
  bad subject-token signature                + client auth, subject-token parse, key, ES256 verify
  subject without mfa (first rule denies)    + claim checks, rules context, one rule
  granted                                    + the other rules, mint (claims, ES256 sign), bigger answer

and beside them the raw signature operations and the public verifier (`exchange.verify`) checking
the purpose tokens the app just minted, with the JWKS it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import crypto, report
from harness.idp import FakeIdP
from harness.procs import SERVER_CPUS, can_pin
from harness.service import Exchange

BATCH = 64


class App:
    """An ASGI app with its lifespan started; `call` runs one request and returns (status, body)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def start(self) -> None:
        self._task = asyncio.create_task(
            self.app(
                {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, self._in.get, self._out.put
            )
        )
        await self._in.put({"type": "lifespan.startup"})
        message = await self._out.get()
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"app did not start: {message}")

    async def stop(self) -> None:
        await self._in.put({"type": "lifespan.shutdown"})
        await self._out.get()
        await self._task

    async def call(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8080),
            "state": {},
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        status, chunks = 0, []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


async def _timed(n: int, make: Callable[[int], Any], expect: int) -> float:
    """CPU seconds per request for n requests, BATCH at a time; every answer must be `expect`."""
    for i in range(0, min(n, BATCH * 2), BATCH):  # warm
        await asyncio.gather(*(make(j) for j in range(i, min(i + BATCH, n))))
    t0 = time.process_time()
    for i in range(0, n, BATCH):
        answers = await asyncio.gather(*(make(j) for j in range(i, min(i + BATCH, n))))
        bad = [a for a in answers if a[0] != expect]
        if bad:
            raise RuntimeError(f"expected {expect}, got {bad[0][0]}: {bad[0][1][:300]!r}")
    return (time.process_time() - t0) / n


async def _run(ex: Exchange, idp: FakeIdP, n: int) -> tuple[list[tuple[str, float]], list[str]]:
    from exchange.app import app_from_env  # the factory granian runs
    from exchange.verify import PurposeTokenVerifier

    app = App(app_from_env())
    await app.start()
    try:
        good = [t.encode() for t in (ex.form(tok) for tok in idp.pool(n))]
        now = int(time.time())
        no_mfa = [ex.form(idp.token(f"nomfa-{i}", now=now, amr=["pwd"])).encode() for i in range(n)]
        bad_sig = [
            ex.form(t[:-3] + ("AAA" if not t.endswith("AAA") else "BBB")).encode() for t in idp.pool(n)
        ]
        wrong_grant = ex.form(idp.token("x")).replace("token-exchange", "nope").encode()
        h = ex.headers("micro")
        text = {k: v for k, v in h.items() if k != "Content-Type"} | {"Content-Type": "text/plain"}
        minted: list[str] = []

        async def granted(i: int) -> tuple[int, bytes]:
            status, body = await app.call("POST", "/token", h, good[i])
            if status == 200 and len(minted) < 2000:
                minted.append(json.loads(body)["access_token"])
            return status, body

        rows = [
            (
                "GET /healthz (litestar route: the framework floor)",
                await _timed(n, lambda i: app.call("GET", "/healthz", {}), 200),
            ),
            (
                "POST /token, wrong content type (refused before the body)",
                await _timed(n, lambda i: app.call("POST", "/token", text, good[i]), 400),
            ),
            (
                "POST /token, unsupported grant_type (form parsed, audited)",
                await _timed(n, lambda i: app.call("POST", "/token", h, wrong_grant), 400),
            ),
            (
                "POST /token, bad subject-token signature (client auth, parse, key, verify; audited)",
                await _timed(n, lambda i: app.call("POST", "/token", h, bad_sig[i]), 400),
            ),
            (
                "POST /token, subject without mfa (claims checked, first rule denies; audited)",
                await _timed(n, lambda i: app.call("POST", "/token", h, no_mfa[i]), 400),
            ),
            ("POST /token, granted (3 rules, mint, audit)", await _timed(n, granted, 200)),
        ]
        _, jwks = await app.call("GET", "/.well-known/jwks.json", {})
    finally:
        await app.stop()
    verifier = PurposeTokenVerifier(
        issuer=ex.url, audience="https://payments.internal", jwks=json.loads(jwks)
    )
    tokens = minted or []
    t0 = time.process_time()
    for t in tokens:
        verifier.verify(t)
    rows.append(
        (
            "public verifier: PurposeTokenVerifier.verify (ES256, static JWKS)",
            (time.process_time() - t0) / max(1, len(tokens)),
        )
    )
    return rows, [f"{len(tokens)} purpose tokens verified"]


def micro(args: argparse.Namespace, idp: FakeIdP, work: Path) -> str:
    n = max(BATCH, min(args.micro, 50_000))
    store = args.stores.split(",")[0]
    saved_aff, saved_err = os.sched_getaffinity(0), sys.stderr
    with Exchange(work / store, store, idp, client_auth=args.client_auth, pg_admin_dsn=args.pg_dsn) as ex:
        os.environ.update(ex.env)
        os.environ["EXCHANGE_CONFIG"] = str(ex.config)
        log = (work / "app.log").open("w")  # the app's JSON lines, as the server writes them off a terminal
        if can_pin():
            os.sched_setaffinity(0, {int(SERVER_CPUS)})
        sys.stderr = log
        try:
            rows, notes = asyncio.run(_run(ex, idp, n))
            raw = crypto.raw_costs(("ES256 verify", "ES256 sign", "RS256 verify"))
        finally:
            sys.stderr = saved_err
            os.sched_setaffinity(0, saved_aff)
            log.close()
    table_rows, previous = [], None
    for label, seconds in rows[:6]:
        step = (
            ""
            if previous is None or label.startswith("POST /token, wrong")
            else report.us(seconds - previous)
        )
        table_rows.append([label, report.us(seconds), step])
        previous = seconds
    table_rows.append([rows[6][0], report.us(rows[6][1]), ""])
    table_rows += [[f"raw {name} (cryptography)", report.us(s), ""] for name, s in raw.items()]
    return "\n".join(
        [
            report.header(
                f"In-process costs per request ({store})",
                f"ASGI app from `exchange.app:app_from_env`, driven in-process on CPU {SERVER_CPUS}, {n:,} "
                f"requests per row, {BATCH} in flight; CPU time per request "
                f"(no HTTP server, no load generator); "
                f"client auth {args.client_auth}; " + "; ".join(notes) + ".",
            ),
            report.table(["outcome", "CPU per request", "step: minus the row above"], table_rows),
        ]
    )
