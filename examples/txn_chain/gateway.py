"""The shop's external endpoint (draft-ietf-oauth-transaction-tokens-10 §8.1, steps 1-4 and 8).

A caller from outside sends an OAuth access token and an order. The gateway exchanges the access token
for a Txn-Token carrying the order as `tctx` and the caller's address as `rctx`, and calls the orders
service with the Txn-Token only: the access token never enters the trust domain (§13.4).

    .venv/bin/python examples/txn_chain/gateway.py --port 8301
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import httpx
from litestar import Litestar, Request, Response, get, post
from workload import KEY_FILE, Workload

EXCHANGE = os.environ.get("TXN_CHAIN_EXCHANGE", "http://127.0.0.1:8300")
ORDERS = os.environ.get("TXN_CHAIN_ORDERS", "http://127.0.0.1:8302")  # the ambassador in front of orders
TRUST_DOMAIN = "shop.internal"
GATEWAY = Workload("gateway", KEY_FILE, EXCHANGE, TRUST_DOMAIN)


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@post("/orders")
async def place_order(request: Request[Any, Any, Any], data: dict[str, Any]) -> Response[Any]:
    scheme, _, access_token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not access_token:
        return Response({"error": "invalid_token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await GATEWAY.txn_token(
            http,
            subject_token=access_token,
            scope="orders.place",
            request_details=data,
            request_context={"req_ip": request.client.host if request.client else "unknown"},
        )
        if answer.status_code != 200:
            # The TTS said no (a bad token, an order the rules refuse): tell the caller why.
            return Response(answer.json(), status_code=403)
        txn_token = answer.json()["access_token"]
        placed = await http.post(f"{ORDERS}/orders", json=data, headers={"Txn-Token": txn_token})
    return Response(placed.json(), status_code=placed.status_code)


app = Litestar([health, place_order])

if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8301)
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning")
