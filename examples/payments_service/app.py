"""A small downstream service protected by the Litestar purpose-token plugin.

It trusts purpose tokens from the exchange for its own audience and approves payments only for a
`payments.approve` token. Run it (see README.md):

    PAYMENTS_ISSUER=http://127.0.0.1:8080 .venv/bin/python examples/payments_service/app.py --port 8090
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from litestar import Litestar, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from exchange.verify import JWKSCache, KeySource, PurposeTokenVerifier, StaticJWKS
from exchange.verify.litestar import PurposeClaimsDependency, PurposeTokenPlugin, require_purpose

# The service's own state: a few payments waiting for approval.
PENDING = {
    "p-1001": {"amount": "250.00", "currency": "EUR", "to": "DE89370400440532013000"},
    "p-1002": {"amount": "12500.00", "currency": "EUR", "to": "FR1420041010050500013M02606"},
}


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/payments/{payment_id:str}", guards=[require_purpose()])
async def show_payment(payment_id: FromPath[str]) -> dict[str, Any]:
    """Any valid token for this audience may read."""
    payment = PENDING.get(payment_id)
    if payment is None:
        raise NotFoundException(f"no payment {payment_id}")
    return {"payment_id": payment_id, **payment}


@post("/payments/{payment_id:str}/approve", guards=[require_purpose("payments.approve")])
async def approve_payment(
    payment_id: FromPath[str], purpose_claims: PurposeClaimsDependency
) -> dict[str, Any]:
    """Only a payments.approve token; when it carries authorization_details, they must name this payment."""
    if payment_id not in PENDING:
        raise NotFoundException(f"no payment {payment_id}")
    if purpose_claims.authorization_details:
        # 403 insufficient_scope if the token was issued for another payment. A service whose purpose
        # always carries details should call require_detail unconditionally.
        purpose_claims.require_detail(type="payment", payment_id=payment_id)
    return {
        "payment_id": payment_id,
        "status": "approved",
        "approved_by": purpose_claims.sub,
        "via_client": purpose_claims.client_id,
        "on_behalf_chain": purpose_claims.actors,
        "token_id": purpose_claims.jti,
    }


def create_app(verifier: PurposeTokenVerifier) -> Litestar:
    return Litestar([health, show_payment, approve_payment], plugins=[PurposeTokenPlugin(verifier)])


def verifier_from_env() -> PurposeTokenVerifier:
    """PAYMENTS_ISSUER, PAYMENTS_AUDIENCE, and PAYMENTS_JWKS_FILE or PAYMENTS_JWKS_URI."""
    issuer = os.environ.get("PAYMENTS_ISSUER", "http://127.0.0.1:8080")
    audience = os.environ.get("PAYMENTS_AUDIENCE", "https://payments.internal")
    jwks_file = os.environ.get("PAYMENTS_JWKS_FILE")
    keys: KeySource
    if jwks_file:
        keys = StaticJWKS.from_file(jwks_file)
    else:
        keys = JWKSCache(
            os.environ.get("PAYMENTS_JWKS_URI", issuer.rstrip("/") + "/.well-known/jwks.json"),
            # Compose networks speak plain http between containers; never set this elsewhere.
            allow_insecure_http=os.environ.get("PAYMENTS_JWKS_ALLOW_HTTP") == "1",
        )
    return PurposeTokenVerifier(issuer=issuer, audience=audience, jwks=keys)


def app_from_env() -> Litestar:
    """Factory for `granian --factory` / `uvicorn --factory`."""
    return create_app(verifier_from_env())


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    options = parser.parse_args()
    uvicorn.run(app_from_env(), host=options.host, port=options.port)
