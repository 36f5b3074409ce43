"""The orders service, behind `exchange ambassador --txn-trust-domain shop.internal`.

It runs no verifier of its own: the ambassador verified the Txn-Token and hands over what it verified in
`X-Purpose-Txn-Claims`. It authorises from the token's `tctx` (the order as the gateway asked for it,
immutable along the chain), and calls the shipping service with the `Txn-Token` header exactly as it
received it (draft-ietf-oauth-transaction-tokens-10 §12.2).

    .venv/bin/python examples/txn_chain/orders.py --port 8303
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from typing import Any

import httpx
from litestar import Litestar, Request, Response, get, post

SHIPPING = os.environ.get("TXN_CHAIN_SHIPPING", "http://127.0.0.1:8304")
STOCK = {"sku-42": 5, "sku-7": 100}
_numbers = itertools.count(1001)


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@post("/orders")
async def create_order(request: Request[Any, Any, Any], data: dict[str, Any]) -> Response[Any]:
    # Only the ambassador can reach this port, and it strips any X-Purpose-* header a caller sends.
    claims = json.loads(request.headers["x-purpose-txn-claims"])
    order = claims["tctx"]
    if data != order:
        # The body says something other than the transaction: never act on the difference.
        return Response({"error": "order_differs_from_transaction"}, status_code=403)
    if STOCK.get(order["item"], 0) < order["quantity"]:
        return Response({"error": "out_of_stock"}, status_code=409)
    async with httpx.AsyncClient(timeout=10) as http:
        shipped = await http.post(
            f"{SHIPPING}/shipments", json=order, headers={"Txn-Token": request.headers["txn-token"]}
        )
    if shipped.status_code != 201:
        return Response({"error": "shipping_refused", "shipping": shipped.json()}, status_code=502)
    STOCK[order["item"]] -= order["quantity"]
    return Response(
        {
            "order": next(_numbers),
            "txn": claims["txn"],
            "for": claims["sub_id"]["sub"],
            "shipment": shipped.json(),
        },
        status_code=201,
    )


app = Litestar([health, create_order])

if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8303)
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning")
