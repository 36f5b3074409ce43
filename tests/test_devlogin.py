"""The dev identity provider's sign-in pages (exchange/devlogin.py), over HTTP against `exchange serve`."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from exchange.client import PurposeTokenClient, StepUpRequired
from exchange.verify.compact import b64url_decode, b64url_encode
from tests.server import Server, free_port

REDIRECT = "http://127.0.0.1:8070/callback"
EXCHANGE = str(Path(sys.executable).with_name("exchange"))


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("devlogin")
    port = free_port()
    config = folder / "exchange.toml"
    config.write_text(f"""
issuer = "http://127.0.0.1:{port}"
[store]
url = "sqlite:///{folder}/exchange.db"
[dev_issuer]
issuer = "http://127.0.0.1:{port}/dev-idp"
key_file = "{folder}/dev-idp-key.json"
[[clients]]
client_id = "bank-web"
purposes = ["payments.approve"]
[purposes."payments.approve"]
audience = "https://payments.internal"
rules = [{{ rule = "mfa", acr_values = "urn:acr:2fa" }}]
""")
    server = Server(config, port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def authorize_params(**overrides: str) -> tuple[dict[str, str], str]:
    verifier = secrets.token_urlsafe(48)
    params = {
        "response_type": "code",
        "client_id": "bank-web",
        "redirect_uri": REDIRECT,
        "state": "st-1",
        "nonce": "n-1",
        "code_challenge": b64url_encode(hashlib.sha256(verifier.encode()).digest()).decode(),
        "code_challenge_method": "S256",
        **overrides,
    }
    return params, verifier


def sign_in(server: Server, params: dict[str, str], *, mfa: bool = False) -> str:
    """Submit the sign-in form as the person would; the code from the redirect."""
    form = {**params, "username": "alice", **({"mfa": "1"} if mfa else {})}
    answer = httpx.post(f"{server.url}/dev-idp/authorize", data=form)
    assert answer.status_code == 303, answer.text
    location = urlsplit(answer.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == [params["state"]] and query["iss"] == [f"{server.url}/dev-idp"]
    return query["code"][0]


def redeem(server: Server, code: str, verifier: str, redirect_uri: str = REDIRECT) -> httpx.Response:
    return httpx.post(
        f"{server.url}/dev-idp/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": "bank-web",
            "code_verifier": verifier,
        },
    )


def claims(id_token: str) -> dict[str, Any]:
    return dict(json.loads(b64url_decode(id_token.split(".")[1].encode())))


def test_the_sign_in_form_is_a_page_with_the_dev_warning(dev_server: Server) -> None:
    params, _ = authorize_params(acr_values="urn:acr:2fa", max_age="300")
    page = httpx.get(f"{dev_server.url}/dev-idp/authorize", params=params)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Never use it in production" in page.text
    assert "asks you to sign in again and confirm with your second factor" in page.text
    assert page.headers["cache-control"] == "no-store"


def test_a_sign_in_with_the_second_factor_gives_an_id_token_the_exchange_accepts(dev_server: Server) -> None:
    params, verifier = authorize_params(acr_values="urn:acr:2fa urn:acr:hwk")
    answer = redeem(dev_server, sign_in(dev_server, params, mfa=True), verifier)
    assert answer.status_code == 200, answer.text
    id_token = answer.json()["id_token"]
    got = claims(id_token)
    assert (got["sub"], got["amr"], got["acr"]) == ("alice", ["pwd", "mfa"], "urn:acr:2fa")
    assert (got["azp"], got["nonce"], got["iss"]) == ("bank-web", "n-1", f"{dev_server.url}/dev-idp")
    with PurposeTokenClient("bank-web", issuer=dev_server.url) as client:
        token = client.get("payments.approve", id_token)
    assert token.purpose == "payments.approve"


def test_a_sign_in_without_it_is_asked_to_step_up(dev_server: Server) -> None:
    params, verifier = authorize_params()
    id_token = redeem(dev_server, sign_in(dev_server, params), verifier).json()["id_token"]
    assert claims(id_token)["amr"] == ["pwd"] and "acr" not in claims(id_token)
    with (
        PurposeTokenClient("bank-web", issuer=dev_server.url) as client,
        pytest.raises(StepUpRequired) as caught,
    ):
        client.get("payments.approve", id_token)
    assert caught.value.acr_values == "urn:acr:2fa"


def test_a_code_is_redeemed_once(dev_server: Server) -> None:
    params, verifier = authorize_params()
    code = sign_in(dev_server, params)
    assert redeem(dev_server, code, verifier).status_code == 200
    again = redeem(dev_server, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("broken", ["verifier", "redirect_uri", "code"])
def test_a_code_needs_its_verifier_and_redirect_uri(dev_server: Server, broken: str) -> None:
    params, verifier = authorize_params()
    code = sign_in(dev_server, params)
    if broken == "verifier":
        answer = redeem(dev_server, code, secrets.token_urlsafe(48))
    elif broken == "redirect_uri":
        answer = redeem(dev_server, code, verifier, redirect_uri="http://127.0.0.1:9999/callback")
    else:
        answer = redeem(dev_server, code[:-4] + "AAAA", verifier)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ({"redirect_uri": "https://attacker.example/callback"}, "loopback"),
        # Parser differentials: 127.0.0.1 to Python's urlsplit, attacker.example to a browser (WHATWG
        # reads "\\" as "/"), or user info that some parsers take for the host.
        ({"redirect_uri": "http://attacker.example\\@127.0.0.1/callback"}, "loopback"),
        ({"redirect_uri": "http://127.0.0.1\\@attacker.example/callback"}, "loopback"),
        ({"redirect_uri": "http://127.0.0.1:8070@attacker.example/callback"}, "loopback"),
        ({"redirect_uri": "http://attacker.example%40127.0.0.1/callback"}, "loopback"),
        ({"redirect_uri": "http://127.0.0.1.attacker.example/callback"}, "loopback"),
        ({"redirect_uri": "http://localhost.attacker.example/callback"}, "loopback"),
        ({"redirect_uri": "http:/\\attacker.example/callback"}, "loopback"),
        ({"code_challenge_method": "plain"}, "PKCE"),
        ({"response_type": "token"}, "response_type=code"),
    ],
)
def test_an_unsafe_request_is_refused_without_redirecting(
    dev_server: Server, override: dict[str, str], says: str
) -> None:
    params, _ = authorize_params(**override)
    for answer in (
        httpx.get(f"{dev_server.url}/dev-idp/authorize", params=params),
        httpx.post(f"{dev_server.url}/dev-idp/authorize", data={**params, "username": "alice"}),
    ):
        assert answer.status_code == 400 and "location" not in answer.headers
        assert says in answer.text


def test_without_a_dev_issuer_there_are_no_sign_in_pages(server: Server) -> None:
    params, _ = authorize_params()
    assert httpx.get(f"{server.url}/dev-idp/authorize", params=params).status_code == 404


def test_no_jwt_travels_through_the_browser(dev_server: Server) -> None:
    params, _ = authorize_params()
    code = sign_in(dev_server, params)
    assert not code.startswith("eyJ") and code.count(".") == 0


class TestNeverInProduction:
    """The dev identity provider signs anyone in as anyone: it must not start where others can reach it."""

    def config(self, folder: Path, issuer: str, dev: str) -> Path:
        path = folder / "exchange.toml"
        path.write_text(
            f'issuer = "{issuer}"\n[store]\nurl = "sqlite:///{folder}/exchange.db"\n'
            f'[dev_issuer]\nissuer = "{dev}"\nkey_file = "{folder}/dev-idp-key.json"\n'
        )
        return path

    @pytest.mark.parametrize(
        ("issuer", "dev", "named"),
        [
            ("https://exchange.example.com", "https://exchange.example.com/dev-idp", "issuer"),
            ("http://127.0.0.1:8080", "https://login.example.com/dev-idp", "dev_issuer.issuer"),
        ],
    )
    def test_a_dev_issuer_beside_a_real_issuer_is_refused(
        self, tmp_path: Path, issuer: str, dev: str, named: str
    ) -> None:
        path = self.config(tmp_path, issuer, dev)
        for command in (["config", "check"], ["serve", "--port", str(free_port())]):
            done = subprocess.run(
                [EXCHANGE, *command, "--config", str(path)], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 1, done.stderr
            assert f"{named}: " in done.stderr and "[dev_issuer]" in done.stderr
        assert not (tmp_path / "dev-idp-key.json").exists()

    def test_serving_the_dev_issuer_beyond_loopback_is_refused(self, tmp_path: Path) -> None:
        port = free_port()
        path = self.config(tmp_path, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/dev-idp")
        done = subprocess.run(
            [EXCHANGE, "serve", "--config", str(path), "--host", "0.0.0.0", "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1
        assert done.stderr.strip().endswith("serve it on a loopback address, not 0.0.0.0")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/dev-idp/authorize", timeout=1)
