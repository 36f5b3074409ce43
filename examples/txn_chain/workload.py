"""The gateway workload's key, and how a workload asks the exchange for a Txn-Token.

    .venv/bin/python examples/txn_chain/workload.py

writes var/gateway.jwk.json (0600) and var/gateway-jwks.json.

The gateway authenticates with `private_key_jwt` (draft-ietf-oauth-transaction-tokens-10 §11.5 asks
for asymmetric methods): the exchange knows only the public half (`gateway-jwks.json`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
from joserfc.jwk import ECKey

from exchange.client import PrivateKeyJWT

HERE = Path(__file__).resolve().parent
VAR = HERE / "var"
KEY_FILE = VAR / "gateway.jwk.json"
JWKS_FILE = VAR / "gateway-jwks.json"
TXN_TOKEN = "urn:ietf:params:oauth:token-type:txn_token"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"


def write_keys() -> None:
    """Create the gateway's key pair once (the private half readable by its owner only)."""
    VAR.mkdir(mode=0o700, exist_ok=True)
    if KEY_FILE.exists():
        return
    key = ECKey.generate_key("P-256")
    fd = os.open(KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(key.as_dict(private=True), fh)
    public = {**key.as_dict(private=False), "kid": key.thumbprint(), "alg": "ES256", "use": "sig"}
    JWKS_FILE.write_text(json.dumps({"keys": [public]}))


class Workload:
    """A workload of the trust domain that asks the TTS for Txn-Tokens (draft §11.1)."""

    def __init__(self, client_id: str, key_file: Path, exchange: str, trust_domain: str) -> None:
        self.client_id = client_id
        self.token_endpoint = f"{exchange.rstrip('/')}/token"
        self.trust_domain = trust_domain
        self._auth = PrivateKeyJWT(json.loads(key_file.read_text()))

    async def txn_token(
        self,
        http: httpx.AsyncClient,
        *,
        subject_token: str,
        scope: str,
        request_details: dict[str, Any],
        request_context: dict[str, Any],
    ) -> httpx.Response:
        """The exchange's answer: 200 with the Txn-Token as `access_token`, or an RFC 6749 error."""
        headers, auth = self._auth.apply(self.client_id, self.token_endpoint, time.time())
        form = {
            "grant_type": GRANT,
            "requested_token_type": TXN_TOKEN,
            "audience": self.trust_domain,
            "scope": scope,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN,
            "request_details": json.dumps(request_details),
            "request_context": json.dumps(request_context),
            **auth,
        }
        return await http.post(self.token_endpoint, data=form, headers=headers)


if __name__ == "__main__":
    write_keys()
    print(f"gateway key: {KEY_FILE}\ngateway public keys (for the exchange): {JWKS_FILE}")
