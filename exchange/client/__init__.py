"""Ask the exchange for purpose tokens the right way: the client app's side of Purpose Exchange.

    from exchange.client import PurposeTokenClient, StepUpRequired

    client = PurposeTokenClient("bank-web", issuer="https://exchange.example")
    try:
        token = client.get("payments.approve", id_token, authorization_details=[payment])
    except StepUpRequired as step_up:
        ...  # send the user to sign in again with step_up.acr_values / step_up.max_age

`get` (and `aget` for asyncio) returns a `PurposeToken` or raises one `PurposeTokenError` subclass per
thing an app does about it; tokens are reused only when that is safe. docs/CLIENTS.md is the guide.

Like `exchange.verify`, this package imports joserfc, msgspec, httpx and cryptography only: never
litestar, asyncpg, structlog, click or the exchange server (a test proves it).
"""

from __future__ import annotations

from exchange.client.auth import ClientAuth, ClientSecretBasic, ClientSecretPost, NoClientAuth, PrivateKeyJWT
from exchange.client.client import PurposeTokenClient
from exchange.client.errors import (
    ClientAuthFailed,
    InvalidRequest,
    PurposeDenied,
    PurposeTokenError,
    RateLimited,
    StepUpRequired,
    Unavailable,
)
from exchange.client.retry import Retry
from exchange.client.token import PurposeToken
from schemas.wire import TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT

__all__ = [
    "TOKEN_TYPE_ACCESS_TOKEN",
    "TOKEN_TYPE_ID_TOKEN",
    "TOKEN_TYPE_JWT",
    "ClientAuth",
    "ClientAuthFailed",
    "ClientSecretBasic",
    "ClientSecretPost",
    "InvalidRequest",
    "NoClientAuth",
    "PrivateKeyJWT",
    "PurposeDenied",
    "PurposeToken",
    "PurposeTokenClient",
    "PurposeTokenError",
    "RateLimited",
    "Retry",
    "StepUpRequired",
    "Unavailable",
]
