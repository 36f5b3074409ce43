"""Unauthenticated callers cannot grow the audit trail without bound, on both stores.

Refusals before client authentication are counted per window and key, in a number of rows bounded by
`[audit] tally_keys` whatever is sent; every decision about an authenticated client is still recorded
one by one; records older than `[audit] retention` are purged, and the database refuses to delete a
fresh one whatever the code does.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from schemas.records import OTHER
from tests.backends import Launcher
from tests.conftest import CLIENT_SECRET, basic, exchange_form

TALLY_KEYS = 20
FLOOD_AUDIT = f"tally_window = 60\ntally_keys = {TALLY_KEYS}"
FORM = {"content-type": "application/x-www-form-urlencoded"}
DAY = 86400


def junk(idp_token: str) -> list[dict[str, Any]]:
    """Requests an anonymous caller can send for free, each refused before any client authenticated."""
    requests: list[dict[str, Any]] = []
    for _ in range(300):  # a fresh made-up client each time: the key that would grow without a bound
        requests.append({"data": exchange_form(idp_token, client_id=secrets.token_hex(12))})
    for _ in range(100):  # Basic credentials of made-up clients
        requests.append(
            {
                "data": exchange_form(idp_token, client_id=None),
                "headers": basic(secrets.token_hex(8), "x" * 20),
            }
        )
    for _ in range(20):  # guessing a real client's secret (scrypt per guess: kept few)
        wrong = basic("backoffice", "not-" + CLIENT_SECRET)
        requests.append(
            {"data": exchange_form(idp_token, client_id=None, scope="customer.export"), "headers": wrong}
        )
    for _ in range(40):  # a made-up assertion for a real private_key_jwt client
        requests.append(
            {
                "data": exchange_form(
                    idp_token,
                    client_id="signer",
                    client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    client_assertion="e30.e30.sig",
                )
            }
        )
    for i in range(40):  # malformed requests, refused before the exchange reads them
        requests.append({"content": b"grant_type=%ff" + str(i).encode(), "headers": FORM})
        requests.append({"json": {"grant_type": "x"}})
    for _ in range(40):  # the wrong grant
        requests.append({"data": {"grant_type": "password", "username": "u", "password": "p"}})
    return requests


async def audit_rows(launch: Launcher) -> int:
    return int((await launch.fetch("SELECT count(*) AS n FROM audit_records"))[0]["n"])


async def test_a_flood_of_unauthenticated_junk_grows_the_audit_trail_by_a_bounded_number_of_rows(
    launch: Launcher,
) -> None:
    server = launch.start(audit=FLOOD_AUDIT)
    idp = launch.idp
    flood = junk(idp.token())
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        assert (await client.post("/token", data=exchange_form(idp.token()))).status_code == 200
        before = await audit_rows(launch)

        gate = asyncio.Semaphore(16)

        async def send(request: dict[str, Any]) -> int:
            async with gate:
                return (await client.post("/token", **request)).status_code

        statuses = Counter(await asyncio.gather(*(send(r) for r in flood)))
        assert set(statuses) <= {400, 401}, statuses
        assert await audit_rows(launch) == before  # not one record for the whole flood

        # Authenticated decisions are still recorded one by one, granted or denied.
        granted = await client.post(
            "/token", data=exchange_form(idp.token()), headers={"X-Request-ID": "after-g"}
        )
        weak = exchange_form(idp.token(amr=["pwd"]))
        denied = await client.post("/token", data=weak, headers={"X-Request-ID": "after-d"})
        assert (granted.status_code, denied.status_code) == (200, 400)
        assert (await launch.audit("after-g"))["decision"] == "granted"
        assert (await launch.audit("after-d"))["denial"] == "claim_mismatch"
    server.stop()  # writes the window in progress

    rows = await launch.fetch("SELECT * FROM unauthenticated_denials")
    assert sum(r["count"] for r in rows) == len(flood)  # every refusal counted
    per_window = Counter(r["window_start"] for r in rows)
    assert all(n <= 2 * TALLY_KEYS + 1 for n in per_window.values()), per_window
    assert len(per_window) <= 2  # the flood took less than a minute: one window, or two
    # A configured client's name survives folding, so guessing at its secret stays visible.
    bad_secret = [r for r in rows if r["reason"] == "bad_secret"]
    assert {r["client_id"] for r in bad_secret} == {"backoffice"}
    assert sum(r["count"] for r in bad_secret) == 20
    assert {r["source"] for r in rows} <= {"127.0.0.1", OTHER}
    assert await audit_rows(launch) == before + 2


async def test_old_records_and_counts_are_purged_and_fresh_records_cannot_be_deleted(
    launch: Launcher,
) -> None:
    server = launch.start(audit='retention = "30d"\ntally_window = 1')
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        fresh = await client.post(
            "/token", data=exchange_form(launch.idp.token()), headers={"X-Request-ID": "fresh"}
        )
        assert fresh.status_code == 200
    server.stop()
    now = time.time()
    for rid, age in [("old-1", 40 * DAY), ("old-2", 31 * DAY), ("recent", 2 * DAY)]:
        await launch.execute(
            "INSERT INTO audit_records (time, request_id, decision) VALUES ($1, $2, 'denied')", now - age, rid
        )
    for age in (40 * DAY, 2 * DAY):
        await launch.execute(
            "INSERT INTO unauthenticated_denials VALUES"
            " ($1, 60, 'unknown_client', 'invalid_client', 'x', '', 5)",
            int(now - age),
        )
    # Whatever the code does, the database keeps records younger than an hour: only retention deletes.
    with pytest.raises(Exception, match="append-only"):
        await launch.execute("DELETE FROM audit_records WHERE request_id = $1", "fresh")

    launch.restart(server)  # the purge sweeps at start, then every minute
    deadline = time.monotonic() + 30
    while True:
        kept = {r["request_id"] for r in await launch.fetch("SELECT request_id FROM audit_records")}
        if "old-1" not in kept or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert kept == {"fresh", "recent"}
    windows = [
        r["window_start"] for r in await launch.fetch("SELECT window_start FROM unauthenticated_denials")
    ]
    assert windows == [int(now - 2 * DAY)]
