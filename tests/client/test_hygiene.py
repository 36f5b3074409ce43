"""No token, secret or key in any log line, exception message or repr the client library produces."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

import httpx
import pytest

from exchange.client import (
    ClientSecretBasic,
    PrivateKeyJWT,
    PurposeTokenClient,
    PurposeTokenError,
    Retry,
)
from tests.client.conftest import ODD_SECRET, identity
from tests.idp import FakeIdP, load_key
from tests.server import Server, free_port

WRONG_SECRET = "not-the-secret-7f3a9c"


def test_nothing_secret_reaches_logs_errors_or_reprs(
    exchange_server: Server, idp: FakeIdP, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets_seen: list[str] = [ODD_SECRET, WRONG_SECRET, load_key("client_ec").as_dict(private=True)["d"]]
    shown: list[str] = []

    def capture(request: httpx.Request) -> None:
        form = parse_qs(request.content.decode())
        secrets_seen.extend(form.get("client_assertion", []))
        secrets_seen.extend(form.get("subject_token", []))

    def attempt(client: PurposeTokenClient, *args: object, **kwargs: object) -> None:
        shown.append(repr(client))
        try:
            token = client.get(*args, **kwargs)  # type: ignore[arg-type]
        except PurposeTokenError as exc:
            shown.extend([str(exc), repr(exc), repr(exc.args)])
        else:
            secrets_seen.append(token.access_token)
            shown.extend([repr(token), str(token)])

    http = httpx.Client(event_hooks={"request": [capture]})
    vault = PurposeTokenClient(
        "vault", issuer=exchange_server.url, auth=ClientSecretBasic(ODD_SECRET), http_client=http
    )
    wrong = PurposeTokenClient(
        "vault", issuer=exchange_server.url, auth=ClientSecretBasic(WRONG_SECRET), http_client=http
    )
    signer = PurposeTokenClient(
        "signer", issuer=exchange_server.url, auth=PrivateKeyJWT(load_key("client_ec")), http_client=http
    )
    teller = PurposeTokenClient("teller", issuer=exchange_server.url, http_client=http)
    down = PurposeTokenClient(
        "teller",
        token_endpoint=f"http://127.0.0.1:{free_port()}/token",
        retry=Retry(attempts=2, base_delay=0.0, max_delay=0.0),
        sleep=lambda _: None,
    )
    archive = {"audience": "https://archive.internal"}
    attempt(vault, "statement.read", identity(idp, "vault"), **archive)
    attempt(vault, "statement.read", identity(idp, "vault"), **archive)
    attempt(wrong, "statement.read", identity(idp, "vault"), **archive)
    attempt(signer, "customer.export", identity(idp, "signer"), audience="https://crm.internal")
    attempt(
        teller, "transfer.approve", identity(idp, amr=["pwd"]), authorization_details=[{"type": "payment"}]
    )
    attempt(teller, "transfer.approve", identity(idp, amr=["pwd"]))
    attempt(teller, "statement.read", "not-a-token-but-secret-all-the-same", **archive)
    attempt(down, "statement.read", identity(idp), **archive)
    http.close()
    down.close()

    assert len(secrets_seen) > 8
    lines = [record.getMessage() for record in caplog.records]
    assert any("purpose_token_issued" in line for line in lines)
    assert any("purpose_token_retry" in line for line in lines)
    text = "\n".join(lines + shown)
    for secret in secrets_seen:
        assert secret not in text
    assert "not-a-token-but-secret" not in text
    assert repr(PrivateKeyJWT(load_key("client_ec"))).startswith("PrivateKeyJWT(alg='ES256', kid=")
    assert "redacted" in repr(ClientSecretBasic(ODD_SECRET))
