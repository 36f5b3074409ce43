"""The ambassador as an attacker meets it: a real `exchange ambassador` (granian, two workers) in front
of a real upstream, driven with raw bytes over sockets so no client library tidies a request up first.

No bypass by method case or path spelling, identity and forwarding headers ours in every spelling,
method overrides dropped, `Connection` naming end-to-end headers refused, a single-use token accepted
once across both workers, request bodies under a deadline that a slow upload cannot use to hold the
upstream pool, and request and response bodies streamed both ways (chunked, large, keep-alive).
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import Key

from tests.verify.conftest import AUDIENCE, ISSUER, PURPOSE, base_claims, mint, public_jwks
from tests.verify.forward_auth_cases import BYPASS_PATHS
from tests.verify.test_ambassador import free_port, start, stop

ROUTES = f"""
[[route]]
prefix = "/open"
open = true

[[route]]
prefix = "/stream"
open = true

[[route]]
methods = ["POST"]
prefix = "/payments/"
purpose = "{PURPOSE}"

[[route]]
methods = ["GET", "HEAD"]
prefix = "/accounts/"
"""


@pytest.fixture(scope="module")
def ambassador(tmp_path_factory: pytest.TempPathFactory, ec_key: Key) -> Iterator[int]:
    work = tmp_path_factory.mktemp("ambassador-rules")
    (work / "jwks.json").write_text(json.dumps(public_jwks(ec_key)))
    (work / "routes.toml").write_text(ROUTES)
    up_port, port = free_port(), free_port()
    upstream = start(
        [sys.executable, "-m", "uvicorn", "tests.verify.upstream_app:app", "--host", "127.0.0.1",
         "--port", str(up_port), "--log-level", "warning", "--no-access-log"], up_port,
    )  # fmt: skip
    proxy = start(
        [str(Path(sys.executable).parent / "exchange"), "ambassador", "--listen", f"127.0.0.1:{port}",
         "--upstream", f"http://127.0.0.1:{up_port}", "--issuer", ISSUER, "--audience", AUDIENCE,
         "--jwks-file", str(work / "jwks.json"), "--routes", str(work / "routes.toml"),
         "--workers", "2", "--body-timeout", "1", "--max-connections", "1"], port,
    )  # fmt: skip
    try:
        yield port
    finally:
        stop(proxy)
        stop(upstream)


def token(key: Key, **claims: Any) -> str:
    now = int(time.time())
    return mint(key, base_claims(iat=now, exp=now + 300, **claims))


def send(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, data


def request(method: str, target: str, *headers: tuple[str, str], body: bytes | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: service.test", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def echo_of(data: bytes) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in json.loads(data)["headers"]:
        headers.setdefault(name, []).append(value)
    return headers


class TestNoBypass:
    @pytest.mark.parametrize("path", BYPASS_PATHS)
    def test_no_path_spelling_reaches_a_protected_route_through_an_open_one(
        self, ambassador: int, path: str
    ) -> None:
        status, _, body = send(ambassador, request("GET", path))
        assert status in (400, 404), body

    @pytest.mark.parametrize("method", ["post", "Post", "pOST"])
    def test_a_method_in_another_case_is_refused(self, ambassador: int, ec_key: Key, method: str) -> None:
        auth = ("Authorization", f"Bearer {token(ec_key, scope='other.purpose')}")
        status, _, body = send(ambassador, request(method, "/payments/p-1", auth, body=b"{}"))
        assert (status, json.loads(body)) == (400, {"error": "invalid_request"})

    def test_identity_and_forwarding_headers_are_ours_in_every_spelling(
        self, ambassador: int, ec_key: Key
    ) -> None:
        forged = [
            ("X-Purpose-Sub", "root"), ("x-PURPOSE-sub", "root"), ("X_Purpose_Sub", "root"),
            ("x_purpose_claims", "{}"), ("X-Forwarded-For", "10.0.0.1"), ("X_Forwarded_For", "10.0.0.1"),
            ("X-Real-IP", "10.0.0.1"), ("Forwarded", "for=10.0.0.1"), ("X-Forwarded-Host", "evil"),
        ]  # fmt: skip
        for path, auth in (("/open/x", []), ("/accounts/1", [("Authorization", f"Bearer {token(ec_key)}")])):
            status, _, body = send(ambassador, request("GET", path, *forged, *auth))
            assert status == 200
            echo = echo_of(body)
            assert not [name for name in echo if "_" in name]
            assert echo["x-forwarded-for"] == ["127.0.0.1"]
            assert echo["x-real-ip"] == ["127.0.0.1"]
            assert echo["x-forwarded-host"] == ["service.test"]
            assert echo["forwarded"] == ['for="127.0.0.1";proto=http;host="service.test"']
            purpose_headers = {name: value for name, value in echo.items() if name.startswith("x-purpose-")}
            if auth:
                assert purpose_headers["x-purpose-sub"] == ["alice"]
                assert sorted(purpose_headers) == ["x-purpose-claims", "x-purpose-scope", "x-purpose-sub"]
            else:
                assert purpose_headers == {}

    def test_method_override_headers_are_dropped(self, ambassador: int) -> None:
        overrides = [
            ("X-HTTP-Method-Override", "DELETE"), ("X-Method-Override", "DELETE"),
            ("X-HTTP-Method", "DELETE"),
            ("X-Original-URL", "/accounts/1"), ("X-Rewrite-URL", "/a"),
        ]  # fmt: skip
        status, _, body = send(ambassador, request("POST", "/open/x", *overrides, body=b""))
        assert status == 200
        assert not set(echo_of(body)) & {"x-http-method-override", "x-method-override", "x-http-method",
                                          "x-original-url", "x-rewrite-url"}  # fmt: skip

    @pytest.mark.parametrize("named", ["Authorization", "X-Purpose-Sub", "X-Forwarded-For", "Content-Type"])
    def test_connection_may_not_name_end_to_end_headers(
        self, ambassador: int, ec_key: Key, named: str
    ) -> None:
        head = request("GET", "/accounts/1", ("Authorization", f"Bearer {token(ec_key)}")).replace(
            b"Connection: close", f"Connection: close, {named}".encode()
        )
        status, _, body = send(ambassador, head)
        assert (status, json.loads(body)) == (400, {"error": "invalid_request"})

    def test_two_authorization_headers_are_refused(self, ambassador: int, ec_key: Key) -> None:
        good = ("Authorization", f"Bearer {token(ec_key)}")
        status, headers, _ = send(
            ambassador, request("GET", "/accounts/1", good, ("Authorization", "Bearer x"))
        )
        assert (status, headers["www-authenticate"]) == (400, 'Bearer error="invalid_request"')


class TestSingleUse:
    def test_a_single_use_token_is_accepted_once_across_workers(self, ambassador: int, ec_key: Key) -> None:
        once = ("Authorization", f"Bearer {token(ec_key, single_use=True)}")
        # Fresh connections, so granian spreads them over its two workers.
        statuses = [send(ambassador, request("POST", "/payments/p-1", once, body=b"{}"))[0] for _ in range(8)]
        assert statuses.count(200) == 1 and statuses.count(401) == 7, statuses


class TestBodies:
    def test_a_chunked_upload_streams_to_the_upstream(self, ambassador: int, ec_key: Key) -> None:
        auth = f"Bearer {token(ec_key)}"
        pieces = [b"x" * 700_000, b"y" * 700_000]  # over the buffer: streamed, not held
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        head = request("POST", "/payments/p-1", ("Authorization", auth), ("Transfer-Encoding", "chunked"))
        status, _, body = send(ambassador, head, chunked)
        assert status == 200
        assert json.loads(body)["body"] == (b"".join(pieces)).decode()

    def test_a_slow_upload_is_cut_at_the_deadline(self, ambassador: int) -> None:
        with socket.create_connection(("127.0.0.1", ambassador), timeout=10) as sock:
            sock.sendall(
                request("POST", "/open/x").replace(b"\r\n\r\n", b"\r\nContent-Length: 100\r\n\r\n") + b"0123"
            )
            response = http.client.HTTPResponse(sock)
            response.begin()  # the 1 s body deadline passes with 96 bytes still missing
            assert (response.status, json.loads(response.read())) == (408, {"error": "request_timeout"})

    def test_a_stalled_upload_does_not_hold_the_only_upstream_connection(self, ambassador: int) -> None:
        # --max-connections 1: the stalled body is held by the ambassador, not sent on the connection.
        with socket.create_connection(("127.0.0.1", ambassador), timeout=10) as stalled:
            stalled.sendall(
                request("POST", "/open/x").replace(b"\r\n\r\n", b"\r\nContent-Length: 100\r\n\r\n")
            )
            assert send(ambassador, request("GET", "/open/y"))[0] == 200

    def test_responses_stream_back_chunk_by_chunk_over_keep_alive(self, ambassador: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", ambassador, timeout=10)
        try:
            for _ in range(3):  # one client connection, three requests: keep-alive on both sides
                connection.request("GET", "/stream")
                response = connection.getresponse()
                assert (response.status, response.read()) == (200, b"chunk0\nchunk1\nchunk2\n")
                connection.request("HEAD", "/open/x")
                head = connection.getresponse()
                assert (head.status, head.read()) == (200, b"")
        finally:
            connection.close()


def test_the_verifiers_stdlib_records_reach_the_json_log(
    tmp_path: Path, ec_key: Key, other_ec_key: Key
) -> None:
    # exchange.verify logs through plain stdlib logging (library users keep it); inside our server the
    # record is one JSON line like every other, with its fields, and never the token.
    (tmp_path / "jwks.json").write_text(json.dumps(public_jwks(ec_key)))
    port = free_port()
    proxy = start(
        [str(Path(sys.executable).parent / "exchange"), "ambassador", "--listen", f"127.0.0.1:{port}",
         "--upstream", f"http://127.0.0.1:{free_port()}", "--issuer", ISSUER, "--audience", AUDIENCE,
         "--jwks-file", str(tmp_path / "jwks.json"), "--purpose", PURPOSE], port,
    )  # fmt: skip
    forged = token(other_ec_key)
    try:
        status, _, _ = send(port, request("GET", "/x", ("Authorization", f"Bearer {forged}")))
    finally:
        proxy.terminate()
        _, err = proxy.communicate(timeout=15)
    assert status == 401
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    refused = [line for line in lines if line.get("event") == "purpose_token_refused"]
    assert refused and refused[0]["logger"] == "exchange.verify" and refused[0]["reason"] == "unknown_key"
    assert forged not in err.decode()
