"""Red team, round 2: the placements as an attacker meets them, over real sockets.

A real `exchange ambassador` (granian, two workers) in front of the tests' echo upstream, and a real
`exchange gateway --proxy nginx` asked directly the way nginx's auth_request asks it. Every request is
raw bytes, so no client library tidies it up first. Each row is one attack; docs/THREAT_MODEL.md maps
them to their defences.
"""

from __future__ import annotations

import http.client
import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import Key

from exchange.verify.routes import Route, RouteTable
from tests.verify.conftest import AUDIENCE, ISSUER, PURPOSE, base_claims, mint, public_jwks
from tests.verify.test_ambassador import free_port, start, stop
from tests.verify.test_ambassador_rules import echo_of, request, send

EXCHANGE = str(Path(sys.executable).parent / "exchange")
HEADER_TIMEOUT = 2

# A catch-all open route last, as many tables end: what a request does not match above is public.
ROUTES = f"""
[[route]]
prefix = "/open"
open = true

[[route]]
methods = ["POST"]
prefix = "/payments/"
purpose = "{PURPOSE}"

[[route]]
methods = ["GET", "HEAD"]
prefix = "/accounts/"

[[route]]
prefix = "/Admin"
purpose = "{PURPOSE}"

[[route]]
methods = ["GET"]
prefix = "/reports"
purpose = "{PURPOSE}"

[[route]]
prefix = "/"
open = true
"""


@pytest.fixture(scope="module")
def placements(tmp_path_factory: pytest.TempPathFactory, ec_key: Key) -> Iterator[dict[str, int]]:
    work = tmp_path_factory.mktemp("attacks-placements")
    (work / "jwks.json").write_text(json.dumps(public_jwks(ec_key)))
    (work / "routes.toml").write_text(ROUTES)
    up_port, amb_port, gw_port = free_port(), free_port(), free_port()
    verifier = ["--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-file", str(work / "jwks.json"),
                "--routes", str(work / "routes.toml"), "--header-timeout", str(HEADER_TIMEOUT)]  # fmt: skip
    upstream = start(
        [sys.executable, "-m", "uvicorn", "tests.verify.upstream_app:app", "--host", "127.0.0.1",
         "--port", str(up_port), "--log-level", "warning", "--no-access-log"], up_port,
    )  # fmt: skip
    ambassador = start(
        [EXCHANGE, "ambassador", "--listen", f"127.0.0.1:{amb_port}", "--upstream",
         f"http://127.0.0.1:{up_port}", *verifier, "--workers", "2"], amb_port,
    )  # fmt: skip
    gateway = start(
        [EXCHANGE, "gateway", "--proxy", "nginx", "--listen", f"127.0.0.1:{gw_port}", *verifier], gw_port
    )
    try:
        yield {"ambassador": amb_port, "gateway": gw_port}
    finally:
        for process in (gateway, ambassador, upstream):
            stop(process)


def bearer(key: Key, **claims: Any) -> tuple[str, str]:
    now = int(time.time())
    return ("Authorization", f"Bearer {mint(key, base_claims(iat=now, exp=now + 300, **claims))}")


def ask_gateway(port: int, method: str, uri: str, *headers: tuple[str, str]) -> tuple[int, dict[str, str]]:
    """The check nginx's auth_request makes (docs/VERIFY.md): the original method and URI in headers."""
    status, answer, _ = send(
        port, request("GET", "/check", ("X-Original-Method", method), ("X-Original-URI", uri), *headers)
    )
    return status, answer


# Each spells a path the upstream may take for a guarded one, while the exact match is the open catch-all.
CASE_SPELLINGS = ["/ACCOUNTS/1", "/Accounts/1", "/accounts/../ACCOUNTS/1", "/%41ccounts/1", "/admin/users",
                  "/ADMIN", "/aDmIn/x",
                  "/adm%C4%B1n/users",  # U+0131 dotless i: "I" upper-cased (.NET OrdinalIgnoreCase)
                  "/report%C5%BF/1",  # U+017F long s: "S" upper-cased
                  "/account%C5%BF/1",
                  ]  # fmt: skip


class TestLetterCase:
    """An upstream that routes case-insensitively (Express's default, ASP.NET, IIS, a case-insensitive
    file system) serves /ACCOUNTS/1 as /accounts/1: a route chosen by case would open it."""

    @pytest.mark.parametrize("path", CASE_SPELLINGS)
    def test_a_route_chosen_by_letter_case_is_refused_by_the_ambassador(
        self, placements: dict[str, int], path: str
    ) -> None:
        status, _, body = send(placements["ambassador"], request("GET", path))
        assert (status, json.loads(body)) == (400, {"error": "invalid_request"}), body

    @pytest.mark.parametrize("path", CASE_SPELLINGS)
    def test_a_route_chosen_by_letter_case_is_refused_by_the_gateway(
        self, placements: dict[str, int], path: str
    ) -> None:
        assert ask_gateway(placements["gateway"], "GET", path)[0] == 400

    def test_paths_whose_route_does_not_depend_on_case_pass(
        self, placements: dict[str, int], ec_key: Key
    ) -> None:
        # Upper case under the catch-all, where folding picks the same route, stays open; the guarded
        # routes in their own spelling still work.
        status, _, body = send(placements["ambassador"], request("GET", "/Static/Logo.PNG"))
        assert (status, echo_of(body).get("x-purpose-sub")) == (200, None)
        status, _, body = send(placements["ambassador"], request("GET", "/accounts/1", bearer(ec_key)))
        assert (status, echo_of(body)["x-purpose-sub"]) == (200, ["alice"])
        assert send(placements["ambassador"], request("GET", "/Admin/x"))[0] == 401
        assert ask_gateway(placements["gateway"], "GET", "/Admin/x", bearer(ec_key))[0] == 200


class TestHeadIsGet:
    """Found in round 2: a GET-only rule let HEAD fall through to the open catch-all, and the upstream
    ran its GET handler for it (status, headers and side effects of a guarded resource, no token)."""

    def test_head_needs_what_get_needs(self, placements: dict[str, int], ec_key: Key) -> None:
        status, headers, _ = send(placements["ambassador"], request("GET", "/reports/1"))
        assert (status, headers["www-authenticate"]) == (401, "Bearer")
        assert head(placements["ambassador"], "/reports/1") == (401, "Bearer")
        for method in ("GET", "HEAD"):
            assert ask_gateway(placements["gateway"], method, "/reports/1")[0] == 401
        assert head(placements["ambassador"], "/reports/1", bearer(ec_key))[0] == 200
        assert send(placements["ambassador"], request("POST", "/reports/1", body=b""))[0] == 200  # open

    def test_a_get_route_matches_head(self) -> None:
        table = RouteTable([Route(prefix="/r", methods=frozenset({"GET"}), purpose=PURPOSE)])
        assert table.match("HEAD", "/r/1") is table.routes[0]


class TestRouteTablePrecedence:
    """A less specific route placed first takes a more specific one's requests: the table is refused."""

    @pytest.mark.parametrize(
        "routes",
        [
            [Route(prefix="/", open=True), Route(prefix="/admin", purpose=PURPOSE)],
            [Route(prefix="/api/", methods=frozenset({"GET"}), open=True), Route(prefix="/api/admin")],
            [
                Route(prefix="/pay", purpose="a"),
                Route(prefix="/pay/", methods=frozenset({"POST"}), purpose="b"),
            ],
            [Route(prefix="/x", methods=frozenset({"GET"})), Route(prefix="/x", methods=frozenset({"GET"}))],
            [Route(prefix="/Admin", open=True), Route(prefix="/admin/keys", purpose=PURPOSE)],  # case-blind
            [
                Route(prefix="/x", methods=frozenset({"GET"})),
                Route(prefix="/x/y", methods=frozenset({"HEAD"})),
            ],
        ],
    )
    def test_a_route_an_earlier_one_shadows_is_refused(self, routes: list[Route]) -> None:
        with pytest.raises(ValueError, match="takes its requests first"):
            RouteTable(routes)

    def test_disjoint_methods_and_specific_first_are_fine(self) -> None:
        RouteTable([Route(prefix="/a/", methods=frozenset({"GET"}), open=True),
                    Route(prefix="/a/", methods=frozenset({"POST"}), purpose=PURPOSE),
                    Route(prefix="/pay/x", purpose="b"), Route(prefix="/pay"), Route(prefix="/payments"),
                    Route(prefix="/", open=True)])  # fmt: skip

    def test_the_ambassador_refuses_to_start_on_a_shadowed_route(self, tmp_path: Path, ec_key: Key) -> None:
        (tmp_path / "jwks.json").write_text(json.dumps(public_jwks(ec_key)))
        (tmp_path / "routes.toml").write_text(
            f'[[route]]\nprefix = "/"\nopen = true\n\n[[route]]\nprefix = "/admin"\npurpose = "{PURPOSE}"\n'
        )
        done = subprocess.run(
            [EXCHANGE, "ambassador", "--listen", f"127.0.0.1:{free_port()}", "--upstream", "http://127.0.0.1:1",
             "--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-file", str(tmp_path / "jwks.json"),
             "--routes", str(tmp_path / "routes.toml")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 1
        assert "'/admin'" in done.stderr and "takes its requests first" in done.stderr
        assert "Traceback" not in done.stderr


class TestRequestTargets:
    @pytest.mark.parametrize(
        "target",
        [
            "*",
            "http://evil.test/open/../accounts/1",
            "http://service.test//accounts/1",
            "/open/%2e%2e/accounts/1",
        ],
    )
    def test_odd_request_targets_never_reach_a_guarded_route(
        self, placements: dict[str, int], target: str
    ) -> None:
        for method in ("GET", "OPTIONS"):
            status, _, body = send(placements["ambassador"], request(method, target))
            assert status in (400, 401), body

    def test_an_absolute_form_target_is_judged_by_its_path(self, placements: dict[str, int]) -> None:
        status, headers, _ = send(placements["ambassador"], request("GET", "http://evil.test/accounts/1"))
        assert (status, headers["www-authenticate"]) == (401, "Bearer")

    def test_a_fragment_or_query_cannot_carry_a_path(self, placements: dict[str, int]) -> None:
        for target in ("/open?/../accounts/1", "/open#/../accounts/1"):
            status, _, body = send(placements["ambassador"], request("GET", target))
            assert status == 200
            assert json.loads(body)["path"] == "/open"


class TestHeaderSmuggling:
    def test_a_tab_or_another_scheme_is_no_token(self, placements: dict[str, int], ec_key: Key) -> None:
        name, value = bearer(ec_key)
        for spelled in (value.replace(" ", "\t"), value.replace("Bearer", "Bearerx"), "Basic " + value[7:]):
            status, _, _ = send(placements["ambassador"], request("GET", "/accounts/1", (name, spelled)))
            assert status == 401

    @pytest.mark.parametrize(
        "head",
        [
            b"GET /accounts/1 HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer\r\n x\r\n\r\n",  # obs-fold
            b"GET /open/x HTTP/1.1\r\nHost: s\r\nX-A: b\r\n\tX-Purpose-Sub: root\r\n\r\n",
            b"GET /accounts/1 HTTP/1.1\r\nHost: s\r\nAuthorization : Bearer x\r\n\r\n",
            b"POST /open/x HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            b"POST /open/x HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ],
    )
    def test_malformed_framing_and_folding_are_refused(self, placements: dict[str, int], head: bytes) -> None:
        assert send(placements["ambassador"], head)[0] == 400

    def test_content_length_with_chunked_cannot_smuggle_a_second_request(
        self, placements: dict[str, int]
    ) -> None:
        smuggled = b"GET /accounts/1 HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n"
        head = b"POST /open/x HTTP/1.1\r\nHost: s\r\nContent-Length: %d\r\n" % (5 + len(smuggled))
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        with socket.create_connection(("127.0.0.1", placements["ambassador"]), timeout=5) as sock:
            sock.sendall(head + b"0\r\n\r\n" + smuggled)
            answers = _read_all(sock)
        # Whatever the server makes of it, the bytes after the chunked body are a request of their own,
        # checked like any other (no token: 401); the upstream never sees /accounts/1.
        assert b'"path": "/accounts/1"' not in answers
        assert answers.count(b"HTTP/1.1 ") <= 2

    @pytest.mark.parametrize(
        "head",
        [
            b"GET /open/x HTTP/1.1\r\nHost: service.test\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
            b"GET /open/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        ],
    )
    def test_two_hosts_or_none_are_refused(self, placements: dict[str, int], head: bytes) -> None:
        # Found in round 2: granian passed both; an outer proxy may route on the first Host while the
        # service got the last as X-Forwarded-Host (RFC 9112 §3.2: 400 for both shapes).
        status, _, body = send(placements["ambassador"], head)
        assert (status, json.loads(body)) == (400, {"error": "invalid_request"})

    def test_http_1_0_without_host_is_fine(self, placements: dict[str, int]) -> None:
        status, _, body = send(placements["ambassador"], b"GET /open/x HTTP/1.0\r\n\r\n")
        assert status == 200 and json.loads(body)["path"] == "/open/x"

    def test_a_pipelined_request_is_checked_on_its_own(self, placements: dict[str, int]) -> None:
        with socket.create_connection(("127.0.0.1", placements["ambassador"]), timeout=5) as sock:
            sock.sendall(
                b"GET /open/x HTTP/1.1\r\nHost: s\r\n\r\n"
                b"GET /accounts/1 HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n"
            )
            answers = _read_all(sock)
        assert [line for line in answers.split(b"\r\n") if line.startswith(b"HTTP/1.1")] == [
            b"HTTP/1.1 200 OK",
            b"HTTP/1.1 401 Unauthorized",
        ]

    def test_other_client_address_and_scheme_headers_never_reach_the_upstream(
        self, placements: dict[str, int]
    ) -> None:
        # Found in round 2: only Forwarded, X-Forwarded-* and X-Real-IP were ours; an upstream allow-listing
        # by True-Client-IP or deciding "https" by X-Forwarded-Ssl took the client's word for it.
        forged = ["True-Client-IP", "X-Client-IP", "Client-IP", "X-Cluster-Client-IP", "CF-Connecting-IP",
                  "Fastly-Client-IP", "X-Originating-IP", "X-Remote-IP", "X-Remote-Addr", "X-ProxyUser-Ip",
                  "X-Original-Forwarded-For", "X-Forwarded", "Forwarded-For", "X-Forwarded-Ssl",
                  "X-Forwarded-Scheme", "X-Url-Scheme", "Front-End-Https", "X-Forwarded-Path"]  # fmt: skip
        headers = [
            (name, "on" if "ssl" in name.lower() or "https" in name.lower() else "10.0.0.1")
            for name in forged
        ]
        status, _, body = send(placements["ambassador"], request("GET", "/open/x", *headers))
        assert status == 200
        assert sorted(set(echo_of(body)) & {name.lower() for name in forged}) == []

    def test_identity_headers_in_every_spelling_never_reach_the_upstream(
        self, placements: dict[str, int], ec_key: Key
    ) -> None:
        forged = [("X-Purpose-Sub", "root"), ("X_PURPOSE_SUB", "root"), ("x-purpose-txn-claims", "{}"),
                  ("X-Purpose-Scope", PURPOSE), ("x-purpose-anything", "1")]  # fmt: skip
        status, _, body = send(
            placements["ambassador"], request("GET", "/accounts/1", *forged, bearer(ec_key))
        )
        assert status == 200
        echo = echo_of(body)
        ours = {n: v for n, v in echo.items() if n.replace("_", "-").startswith("x-purpose-")}
        assert sorted(ours) == ["x-purpose-claims", "x-purpose-scope", "x-purpose-sub"]
        assert (ours["x-purpose-sub"], ours["x-purpose-scope"]) == (["alice"], [PURPOSE])
        assert json.loads(echo["x-purpose-claims"][0])["sub"] == "alice"


class TestTokenConfusion:
    @pytest.mark.parametrize(
        "header, claims",
        [
            ({"typ": "txntoken+jwt"}, {}),  # a Txn-Token presented as a purpose token
            ({"typ": "JWT"}, {}),  # an ID token or plain JWT
            ({}, {"aud": "orders"}),  # another service's purpose token
            ({}, {"iss": "https://idp.test"}),  # someone else's access token
        ],
    )
    def test_other_tokens_are_not_purpose_tokens(
        self, placements: dict[str, int], ec_key: Key, header: dict[str, str], claims: dict[str, str]
    ) -> None:
        now = int(time.time())
        forged = mint(ec_key, base_claims(iat=now, exp=now + 300, **claims), **header)
        auth = ("Authorization", f"Bearer {forged}")
        status, headers, body = send(placements["ambassador"], request("GET", "/accounts/1", auth))
        assert (status, headers["www-authenticate"], json.loads(body)) == (
            401, 'Bearer error="invalid_token"', {"error": "invalid_token"}
        )  # fmt: skip
        assert ask_gateway(placements["gateway"], "GET", "/accounts/1", auth)[0] == 401


class TestSlowClients:
    """Found in round 2: the placements ran granian in its auto mode, whose HTTP/2 sniffing read has no
    timeout, so connections that sent nothing were held forever: 2,000 of them and the ambassador
    answered no one. Now the service's bounds apply (HTTP/1.1, the head within --header-timeout)."""

    @pytest.mark.parametrize("placement", ["ambassador", "gateway"])
    def test_a_silent_or_dribbling_connection_is_closed(
        self, placements: dict[str, int], placement: str
    ) -> None:
        port = placements[placement]
        limit = HEADER_TIMEOUT + 10
        with (
            socket.create_connection(("127.0.0.1", port), timeout=limit) as silent,
            socket.create_connection(("127.0.0.1", port), timeout=limit) as dribbler,
        ):
            started = time.monotonic()
            try:
                for byte in b"GET /open/x HTTP/1.1\r\nHost: s\r\n"[: HEADER_TIMEOUT * 4]:
                    dribbler.sendall(bytes([byte]))  # never finishes its head in time
                    time.sleep(0.5)
            except OSError:
                pass  # closed on us mid-head: what we want
            closed = [_closed(silent), _closed(dribbler)]
            assert closed == [True, True]
            assert time.monotonic() - started < HEADER_TIMEOUT + 10

    def test_many_silent_connections_do_not_lock_others_out(self, placements: dict[str, int]) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 1500 if hard == resource.RLIM_INFINITY else min(1500, hard - 200)
        if soft != resource.RLIM_INFINITY and soft < wanted + 200:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted + 200, hard))
        silent = [socket.create_connection(("127.0.0.1", placements["ambassador"])) for _ in range(wanted)]
        try:
            status, _, _ = send(placements["ambassador"], request("GET", "/open/x"))
            assert status == 200
        finally:
            for sock in silent:
                sock.close()


def head(port: int, target: str, *headers: tuple[str, str]) -> tuple[int, str | None]:
    """Status and challenge of a HEAD request (its answer has no body, whatever Content-Length says)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request("HEAD", target, *headers))
        response = http.client.HTTPResponse(sock, method="HEAD")
        response.begin()
        return response.status, response.getheader("www-authenticate")


def _closed(sock: socket.socket) -> bool:
    """The server closed the connection (end of stream or reset) before the socket's timeout."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data
