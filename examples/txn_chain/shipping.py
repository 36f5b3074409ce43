"""The shipping service: the second service of the chain, verifying the Txn-Token itself.

The Litestar plugin checks the `Txn-Token` header (exactly one token, typ txntoken+jwt, the exchange's
signature, aud = the trust domain, exp: draft-ietf-oauth-transaction-tokens-10 §12.2) before the
handler runs. The handler authorises from `tctx`: it ships what the transaction says, to whom it says,
whatever a compromised caller puts in the body (§1: "parameter modification").

    .venv/bin/python examples/txn_chain/shipping.py --port 8304
"""

from __future__ import annotations

import argparse
import itertools
import os
from typing import Any

from litestar import Litestar, Response, get, post

from exchange.verify.litestar import PurposeTokenPlugin, TxnTokenDependency, require_txn_token
from exchange.verify.txn import TxnTokenVerifier

EXCHANGE = os.environ.get("TXN_CHAIN_EXCHANGE", "http://127.0.0.1:8300")
_numbers = itertools.count(1)


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@post("/shipments", guards=[require_txn_token("orders.place")])
async def ship(data: dict[str, Any], txn_token: TxnTokenDependency) -> Response[Any]:
    claims = txn_token.claims
    if data != claims.tctx:
        return Response({"error": "shipment_differs_from_transaction"}, status_code=403)
    if claims.requesting_workloads[0] != "gateway":
        return Response({"error": "not_started_at_the_gateway"}, status_code=403)
    return Response(
        {"shipment": f"s-{next(_numbers)}", "to": claims.sub_id.sub, **claims.tctx, "txn": claims.txn},
        status_code=201,
    )


def create_app(verifier: TxnTokenVerifier) -> Litestar:
    return Litestar([health, ship], plugins=[PurposeTokenPlugin(txn_verifier=verifier)])


app = create_app(TxnTokenVerifier(trust_domain="shop.internal", issuer=EXCHANGE))

if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8304)
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning")
