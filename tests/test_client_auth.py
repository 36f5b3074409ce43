"""Client authentication over real HTTP (RFC 6749 §2.3, RFC 7521, RFC 7523): an assertion or a secret
authenticates exactly the client whose registered credentials verify it, on both stores."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from exchange.clients import hash_secret
from tests.conftest import CLIENT_SECRET, basic, exchange_form, new_kek, pg_config, write_config
from tests.idp import FakeIdP, load_key
from tests.server import Server, free_port

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# A secret that form-encoding changes: a stock client may send it raw or encoded in Basic.
ODD_SECRET = "s3cr+t%2Fwith/odd:chars and spaces-0123"

# A second private_key_jwt client with a key of its own, beside the shared config's "signer", and a
# secret client whose secret form-encoding changes.
SECOND_SIGNER = """
[[clients]]
client_id = "signer-b"
tokens_issued_to = ["purpose-exchange"]
auth_method = "private_key_jwt"
jwks_file = "{jwks}"
purposes = ["customer.export", "payments.approve"]

[[clients]]
client_id = "odd-secret"
tokens_issued_to = ["purpose-exchange"]
auth_method = "client_secret_basic"
secret_hash = "{odd_hash}"
purposes = ["customer.export"]
"""


def client_config(
    folder: Path, port: int, idp: FakeIdP, idp_ec: FakeIdP, store_url: str | None = None
) -> Path:
    jwks = FakeIdP("signer-b", "client_b_ec", "ES256").write_jwks(folder / "client-b-jwks.json")
    extra = SECOND_SIGNER.format(jwks=jwks, odd_hash=hash_secret(ODD_SECRET))
    if store_url is None:
        return write_config(folder, port, idp, idp_ec, extra=extra)
    return pg_config(folder, port, idp, idp_ec, store_url, extra=extra)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("client-auth")
    port = free_port()
    server = Server(client_config(folder, port, idp, idp_ec), port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def assertion(
    key_name: str,
    *,
    iss: str,
    sub: str,
    aud: Any,
    kid: str | None = "thumbprint",
    lifetime: int = 60,
    **claims: Any,
) -> str:
    """A client assertion made by an independent JWT library (PyJWT), as a stock client makes one."""
    key = load_key(key_name)
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": iss,
        "sub": sub,
        "aud": aud,
        "iat": now,
        "exp": now + lifetime,
        "jti": secrets.token_hex(12),
    }
    payload.update(claims)
    headers = {} if kid is None else {"kid": key.thumbprint() if kid == "thumbprint" else kid}
    return pyjwt.encode(payload, key.as_pem(private=True), algorithm="ES256", headers=headers)


def assertion_form(idp: FakeIdP, client_assertion: str, **params: Any) -> dict[str, Any]:
    return exchange_form(
        idp.token(),
        scope="customer.export",
        audience="https://crm.internal",
        client_assertion=client_assertion,
        client_assertion_type=JWT_BEARER,
        **params,
    )


def post(server: Server, form: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/token", data=form, headers=headers, timeout=10)


def assert_invalid_client(resp: httpx.Response, *, challenge: bool = False) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.json() == {"error": "invalid_client", "error_description": "client authentication failed"}
    # RFC 6749 §5.2: a Basic challenge exactly when the client tried the Authorization header.
    assert ("www-authenticate" in resp.headers) is challenge, resp.headers
    if challenge:
        assert resp.headers["www-authenticate"].startswith("Basic ")


def granted_to(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    return str(pyjwt.decode(resp.json()["access_token"], options={"verify_signature": False})["client_id"])


def export_form(idp: FakeIdP, **params: Any) -> dict[str, Any]:
    return exchange_form(idp.token(), scope="customer.export", audience="https://crm.internal", **params)


def impersonation_attempts(server: Server, idp: FakeIdP) -> None:
    """Client "signer" tries to become "signer-b" every way an assertion allows."""
    token_endpoint = f"{server.url}/token"
    # iss = A (so A's keys are looked up), sub = B, client_id = B: the reported critical flaw.
    a_as_b = assertion("client_ec", iss="signer", sub="signer-b", aud=token_endpoint)
    assert_invalid_client(post(server, assertion_form(idp, a_as_b, client_id="signer-b")))
    # The same without client_id in the body.
    a_as_b = assertion("client_ec", iss="signer", sub="signer-b", aud=token_endpoint)
    assert_invalid_client(post(server, assertion_form(idp, a_as_b, client_id=None)))
    # iss = sub = B, signed with A's key under A's kid.
    b_by_a = assertion("client_ec", iss="signer-b", sub="signer-b", aud=token_endpoint)
    assert_invalid_client(post(server, assertion_form(idp, b_by_a, client_id="signer-b")))
    # iss = sub = B, signed with A's key under B's kid.
    b_kid = load_key("client_b_ec").thumbprint()
    b_by_a = assertion("client_ec", iss="signer-b", sub="signer-b", aud=token_endpoint, kid=b_kid)
    assert_invalid_client(post(server, assertion_form(idp, b_by_a, client_id="signer-b")))
    # A's genuine assertion sent with client_id = B.
    own = assertion("client_ec", iss="signer", sub="signer", aud=token_endpoint)
    assert_invalid_client(post(server, assertion_form(idp, own, client_id="signer-b")))
    # Each client still authenticates as itself.
    for name, key_name in (("signer", "client_ec"), ("signer-b", "client_b_ec")):
        genuine = assertion(key_name, iss=name, sub=name, aud=token_endpoint)
        resp = post(server, assertion_form(idp, genuine, client_id=name))
        assert resp.status_code == 200, resp.text
        claims = pyjwt.decode(resp.json()["access_token"], options={"verify_signature": False})
        assert claims["client_id"] == name


class TestImpersonation:
    def test_a_client_cannot_authenticate_as_another_with_its_own_key(
        self, auth_server: Server, idp: FakeIdP
    ) -> None:
        impersonation_attempts(auth_server, idp)

    @pytest.mark.postgres
    def test_a_client_cannot_authenticate_as_another_on_postgresql(
        self, tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP, pg_url: str
    ) -> None:
        port = free_port()
        server = Server(
            client_config(tmp_path, port, idp, idp_ec, pg_url), port, env={"EXCHANGE_KEK": new_kek()}
        )
        try:
            server.wait_ready()
            impersonation_attempts(server, idp)
        finally:
            server.stop()


class TestAssertions:
    """RFC 7521/7523 as stock clients use it."""

    def test_client_id_in_the_body_is_optional_when_the_assertion_names_the_client(
        self, auth_server: Server, idp: FakeIdP
    ) -> None:
        own = assertion("client_b_ec", iss="signer-b", sub="signer-b", aud=f"{auth_server.url}/token")
        assert granted_to(post(auth_server, assertion_form(idp, own, client_id=None))) == "signer-b"

    def test_kid_is_optional(self, auth_server: Server, idp: FakeIdP) -> None:
        own = assertion("client_ec", iss="signer", sub="signer", aud=f"{auth_server.url}/token", kid=None)
        assert granted_to(post(auth_server, assertion_form(idp, own, client_id="signer"))) == "signer"

    @pytest.mark.parametrize("aud", ["issuer", "token", ["issuer"], ["https://elsewhere", "token"]])
    def test_audience_may_be_the_issuer_or_the_token_endpoint(
        self, auth_server: Server, idp: FakeIdP, aud: Any
    ) -> None:
        names = {"issuer": auth_server.url, "token": f"{auth_server.url}/token"}
        value = [names.get(a, a) for a in aud] if isinstance(aud, list) else names[aud]
        own = assertion("client_ec", iss="signer", sub="signer", aud=value)
        assert granted_to(post(auth_server, assertion_form(idp, own, client_id="signer"))) == "signer"

    @pytest.mark.parametrize(
        ("reason", "overrides"),
        [
            ("wrong_audience", {"aud": "https://elsewhere/token"}),
            ("wrong_audience", {"aud": "URL/token/"}),
            ("iss_sub_mismatch", {"iss": "someone"}),
            ("lifetime_too_long", {"lifetime": 3600 + 61}),
            ("expired", {"lifetime": -31}),
            ("missing_jti", {"jti": ""}),
            ("bad_numeric_date", {"iat": 1.5}),
        ],
    )
    def test_assertions_outside_rfc_7523_are_refused(
        self, auth_server: Server, idp: FakeIdP, reason: str, overrides: dict[str, Any]
    ) -> None:
        aud = overrides.pop("aud", f"{auth_server.url}/token").replace("URL", auth_server.url)
        iss = overrides.pop("iss", "signer")
        lifetime = overrides.pop("lifetime", 60)
        bad = assertion("client_ec", iss=iss, sub="signer", aud=aud, lifetime=lifetime, **overrides)
        rid = f"assert-{secrets.token_hex(4)}"
        resp = post(auth_server, assertion_form(idp, bad, client_id="signer"), {"X-Request-ID": rid})
        assert_invalid_client(resp)
        # Refused before it authenticated: counted under its reason, not recorded one by one.
        assert not auth_server.audit_exists(rid)
        counted = auth_server.denial_count(client_id="signer", reason=f"client_assertion:{reason}")
        assert (counted["error"], counted["source"]) == ("invalid_client", "127.0.0.1")

    def test_an_hour_long_assertion_from_authlib_is_accepted_once(
        self, auth_server: Server, idp: FakeIdP
    ) -> None:
        from authlib.integrations.httpx_client import OAuth2Client
        from authlib.oauth2.rfc7523 import PrivateKeyJWT

        token_endpoint = f"{auth_server.url}/token"
        key = load_key("client_ec")  # authlib imports a PEM as RSA only; it takes a joserfc key as is
        with OAuth2Client(
            "signer", key, token_endpoint_auth_method=PrivateKeyJWT(token_endpoint, alg="ES256")
        ) as client:
            token = client.fetch_token(
                token_endpoint,
                grant_type="urn:ietf:params:oauth:grant-type:token-exchange",
                subject_token=idp.token(),
                subject_token_type="urn:ietf:params:oauth:token-type:id_token",
                scope="customer.export",
                audience="https://crm.internal",
            )
        assert (
            pyjwt.decode(token["access_token"], options={"verify_signature": False})["client_id"] == "signer"
        )

    def test_a_replayed_assertion_is_refused(self, auth_server: Server, idp: FakeIdP) -> None:
        own = assertion("client_ec", iss="signer", sub="signer", aud=f"{auth_server.url}/token")
        assert granted_to(post(auth_server, assertion_form(idp, own, client_id="signer"))) == "signer"
        assert_invalid_client(post(auth_server, assertion_form(idp, own, client_id="signer")))


class TestSecrets:
    def test_a_secret_client_may_use_basic_or_the_form_body(self, auth_server: Server, idp: FakeIdP) -> None:
        # "backoffice" is registered for Basic, "batch" for the form body: each works both ways.
        for client_id in ("backoffice", "batch"):
            via_basic = post(auth_server, export_form(idp, client_id=None), basic(client_id, CLIENT_SECRET))
            assert granted_to(via_basic) == client_id
            via_form = post(auth_server, export_form(idp, client_id=client_id, client_secret=CLIENT_SECRET))
            assert granted_to(via_form) == client_id

    def test_basic_credentials_are_accepted_form_encoded_or_raw(
        self, auth_server: Server, idp: FakeIdP
    ) -> None:
        import base64
        from urllib.parse import quote_plus

        form = export_form(idp, client_id=None)
        # RFC 6749 §2.3.1 spelling (what authlib sends) ...
        encoded = base64.b64encode(f"odd-secret:{quote_plus(ODD_SECRET)}".encode()).decode()
        assert granted_to(post(auth_server, form, {"Authorization": f"Basic {encoded}"})) == "odd-secret"
        # ... and the raw spelling many other clients send.
        assert granted_to(
            post(auth_server, export_form(idp, client_id=None), basic("odd-secret", ODD_SECRET))
        )
        # Neither spelling of a wrong secret.
        assert_invalid_client(
            post(auth_server, export_form(idp, client_id=None), basic("odd-secret", ODD_SECRET + "x")),
            challenge=True,
        )

    def test_a_repeated_authorization_or_content_type_header_is_refused(
        self, auth_server: Server, idp: FakeIdP
    ) -> None:
        # Two credentials in one request: which one counts would depend on who reads it (a proxy that
        # logs the first, a server that takes the last). Refused whichever order, before any client
        # authenticates, and no token.
        from urllib.parse import urlencode

        body = urlencode(export_form(idp, client_id=None))
        form = ("content-type", "application/x-www-form-urlencoded")
        good = ("authorization", basic("backoffice", CLIENT_SECRET)["Authorization"])
        other = ("authorization", basic("batch", CLIENT_SECRET)["Authorization"])
        for headers in ([form, good, other], [form, other, good], [form, good, good], [form, form, good]):
            resp = httpx.post(f"{auth_server.url}/token", content=body, headers=headers, timeout=10)
            assert resp.status_code == 400, (headers, resp.text)
            assert resp.json()["error"] == "invalid_request"
            assert "repeated" in resp.json()["error_description"]
            assert "access_token" not in resp.json()
        # One of each is fine.
        resp = httpx.post(f"{auth_server.url}/token", content=body, headers=[form, good], timeout=10)
        assert granted_to(resp) == "backoffice"

    def test_a_challenge_only_when_basic_was_used(self, auth_server: Server, idp: FakeIdP) -> None:
        wrong = "wrong-secret-0000000000"
        assert_invalid_client(
            post(auth_server, export_form(idp, client_id=None), basic("batch", wrong)), challenge=True
        )
        assert_invalid_client(post(auth_server, export_form(idp, client_id="batch", client_secret=wrong)))
        assert_invalid_client(post(auth_server, export_form(idp, client_id="nobody", client_secret=wrong)))
        assert_invalid_client(
            post(auth_server, export_form(idp, client_id=None), basic("nobody", wrong)), challenge=True
        )
        assert_invalid_client(
            post(auth_server, export_form(idp, client_id=None), {"Authorization": "Bearer abc"}),
            challenge=True,
        )


class TestCrossUse:
    """Every way of presenting one client's credentials for another, or the wrong kind for a client."""

    def test_basic_for_one_client_with_client_id_of_another(self, auth_server: Server, idp: FakeIdP) -> None:
        resp = post(auth_server, export_form(idp, client_id="batch"), basic("backoffice", CLIENT_SECRET))
        assert_invalid_client(resp, challenge=True)

    def test_a_secret_client_cannot_use_an_assertion(self, auth_server: Server, idp: FakeIdP) -> None:
        # Signed by a registered key, but of another client: the secret client has no keys at all.
        forged = assertion("client_ec", iss="batch", sub="batch", aud=f"{auth_server.url}/token")
        assert_invalid_client(post(auth_server, assertion_form(idp, forged, client_id="batch")))

    def test_a_public_client_cannot_present_a_secret(self, auth_server: Server, idp: FakeIdP) -> None:
        form = exchange_form(idp.token(), client_id="bank-web", client_secret=CLIENT_SECRET)
        assert_invalid_client(post(auth_server, form))
        assert_invalid_client(
            post(auth_server, exchange_form(idp.token(), client_id=None), basic("bank-web", "x")),
            challenge=True,
        )

    def test_an_assertion_client_cannot_use_a_secret_or_nothing(
        self, auth_server: Server, idp: FakeIdP
    ) -> None:
        assert_invalid_client(
            post(auth_server, export_form(idp, client_id="signer", client_secret=CLIENT_SECRET))
        )
        assert_invalid_client(post(auth_server, export_form(idp, client_id="signer")))

    def test_a_secret_client_cannot_go_without_its_secret(self, auth_server: Server, idp: FakeIdP) -> None:
        assert_invalid_client(post(auth_server, export_form(idp, client_id="backoffice")))

    def test_a_subject_token_is_not_a_client_assertion(self, auth_server: Server, idp: FakeIdP) -> None:
        # Signed by a trusted issuer, naming a client: still not that client's key.
        token = idp.token(iss="signer", sub="signer", aud=f"{auth_server.url}/token")
        assert_invalid_client(post(auth_server, assertion_form(idp, token, client_id="signer")))


class TestRememberedSecret:
    """In process: a secret once checked by scrypt is remembered as a keyed tag, never as itself."""

    async def test_only_the_same_secret_against_the_same_hash_skips_scrypt(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import exchange.clients as clients_module
        from exchange.clients import ClientAuthenticator, presented_credentials
        from exchange.errors import InvalidClient
        from schemas.config import Client
        from schemas.wire import TokenRequest

        scrypt_calls: list[str] = []
        real = clients_module.verify_secret

        def counted(secret: str, stored: str) -> bool:
            scrypt_calls.append(secret)
            return real(secret, stored)

        monkeypatch.setattr(clients_module, "verify_secret", counted)
        first, second = hash_secret("s3cret-one-0123456789"), hash_secret("s3cret-two-0123456789")

        def authenticator(stored: str, previous: ClientAuthenticator | None = None) -> ClientAuthenticator:
            client = Client(client_id="app", auth_method="client_secret_basic", secret_hash=stored)
            return ClientAuthenticator(
                [client], token_endpoint="https://x/token", issuer="https://x", store=None,  # type: ignore[arg-type]
                previous=previous,
            )  # fmt: skip

        async def check(auth: ClientAuthenticator, secret: str) -> str:
            request = TokenRequest()
            creds = presented_credentials(request, basic("app", secret)["Authorization"])
            try:
                return (await auth.authenticate(creds, request)).client_id
            except InvalidClient as exc:
                return exc.reason or ""

        auth = authenticator(first)
        try:
            assert await check(auth, "s3cret-one-0123456789") == "app"
            assert await check(auth, "s3cret-one-0123456789") == "app"
            assert scrypt_calls == ["s3cret-one-0123456789"]  # the second time by its tag alone
            assert await check(auth, "s3cret-one-012345678") == "bad_secret"
            assert await check(auth, "s3cret-one-0123456789x") == "bad_secret"
            assert len(scrypt_calls) == 3  # a wrong secret always pays scrypt
            assert "s3cret" not in repr(auth._verified)  # a tag, not the secret
            # A reload with another hash for the client: the remembered tag no longer matches.
            reloaded = authenticator(second, previous=auth)
            assert await check(reloaded, "s3cret-one-0123456789") == "bad_secret"
            assert await check(reloaded, "s3cret-two-0123456789") == "app"
            assert await check(reloaded, "s3cret-two-0123456789") == "app"
            assert len(scrypt_calls) == 5
        finally:
            auth.close()
