"""The payments service as a Flask app: the same routes and checks as app.py, with exchange.verify.flask.

Flask has no event loop: the verifier's synchronous `verify` fetches and caches the JWKS itself.

    .venv/bin/python examples/payments_service/flask_app.py --port 8090
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flask import Flask, abort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app import PENDING, verifier_from_env  # the Litestar app's data and settings

from exchange.verify import PurposeTokenVerifier
from exchange.verify.flask import PurposeTokens, current_claims, require_purpose


def create_app(verifier: PurposeTokenVerifier) -> Flask:
    app = Flask("payments")
    PurposeTokens(app, verifier=verifier)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/payments/<payment_id>")
    @require_purpose()
    def show_payment(payment_id: str) -> dict[str, Any]:
        if payment_id not in PENDING:
            abort(404)
        return {"payment_id": payment_id, **PENDING[payment_id]}

    @app.post("/payments/<payment_id>/approve")
    @require_purpose("payments.approve")
    def approve_payment(payment_id: str) -> dict[str, Any]:
        if payment_id not in PENDING:
            abort(404)
        claims = current_claims()
        if claims.authorization_details:
            claims.require_detail(type="payment", payment_id=payment_id)  # 403 for another payment
        return {"payment_id": payment_id, "status": "approved", "approved_by": claims.sub,
                "via_client": claims.client_id, "token_id": claims.jti}  # fmt: skip

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    options = parser.parse_args()
    create_app(verifier_from_env()).run(host=options.host, port=options.port)
