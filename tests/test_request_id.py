"""X-Request-ID is validated (charset, length) before it reaches a log line, the audit trail or a
response header, on every route. Hostile values go over a raw socket: no HTTP client would send them."""

from __future__ import annotations

import json
import re
import socket
from urllib.parse import urlencode

import pytest

from tests.conftest import exchange_form
from tests.idp import FakeIdP
from tests.server import Server

GENERATED = re.compile(r"[0-9a-f]{16}")
SAFE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def raw_request(server: Server, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; the status, headers (last wins) and body of the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        sock.sendall(body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, rest


def exchange_with_id(server: Server, idp: FakeIdP, header_lines: bytes) -> tuple[int, dict[str, str], bytes]:
    body = urlencode(exchange_form(idp.token())).encode()
    head = (
        b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n" + header_lines
    )
    return raw_request(server, head, body)


HOSTILE = {
    # Control characters: the HTTP server refuses the request before the app sees it.
    "crlf-folded": b"X-Request-ID: abc\r\n ridmark-continuation\r\n",
    "ansi-csi": b"X-Request-ID: \x1b[31mred\x1b[0m\r\n",
    "ansi-osc-title": b"X-Request-ID: \x1b]0;pwned\x07\r\n",
    "nul": b"X-Request-ID: a\x00b\r\n",
    # Bytes the HTTP server lets through: the app replaces the id.
    "bidi-override-utf8": "X-Request-ID: \u202eridmark\r\n".encode(),
    "c1-csi-utf8": "X-Request-ID: \u009b31mred\r\n".encode(),
    "c1-csi-raw-byte": b"X-Request-ID: \x9b31mred\r\n",
    "10-kilobytes": b"X-Request-ID: " + b"a" * 10240 + b"\r\n",
    "65-characters": b"X-Request-ID: " + b"b" * 65 + b"\r\n",
    "json-breaking": b'X-Request-ID: x","decision":"granted\r\n',
    "spaces-and-tabs": b"X-Request-ID: a b\tc\r\n",
    "empty": b"X-Request-ID: \r\n",
}


@pytest.mark.parametrize("header", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_hostile_request_id_never_reaches_logs_audit_or_answer(
    server: Server, idp: FakeIdP, header: bytes
) -> None:
    status, headers, _ = exchange_with_id(server, idp, header)
    if status == 400:  # refused by the HTTP server: the app never ran, nothing was recorded
        assert "x-request-id" not in headers
    else:
        assert status == 200
        rid = headers["x-request-id"]
        assert GENERATED.fullmatch(rid), rid  # the caller's value was replaced, not echoed
        assert server.audit(rid)["decision"] == "granted"
    log = server.log.read_bytes()
    for needle in (b"ridmark", b"\x1b", b"\x9b", "\u009b".encode(), "\u202e".encode(), b"a" * 65, b"b" * 65):
        assert needle not in log
    for line in log.splitlines():
        if line.startswith(b"{"):
            rid = json.loads(line).get("request_id")
            assert rid is None or SAFE.fullmatch(rid), rid


def test_a_well_formed_request_id_is_kept_at_its_full_length(server: Server, idp: FakeIdP) -> None:
    given = "A-z.0:9_" * 8  # 64 characters, every kind the charset allows
    status, headers, _ = exchange_with_id(server, idp, f"X-Request-ID: {given}\r\n".encode())
    assert (status, headers["x-request-id"]) == (200, given)
    assert server.audit(given)["decision"] == "granted"
    lines = [json.loads(x) for x in server.log.read_bytes().splitlines() if x.startswith(b"{")]
    assert [x["event"] for x in lines if x.get("request_id") == given] == ["token_issued"]


def test_a_second_request_id_header_cannot_replace_the_first(server: Server, idp: FakeIdP) -> None:
    status, headers, _ = exchange_with_id(
        server, idp, b"X-Request-ID: first-id\r\nX-Request-ID: second-id\r\n"
    )
    assert (status, headers["x-request-id"]) == (200, "first-id")
    assert server.audit("first-id")["decision"] == "granted"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/.well-known/jwks.json", "/token"])
def test_every_route_answers_with_a_validated_request_id(server: Server, path: str) -> None:
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    _, hostile, _ = raw_request(server, head + "X-Request-ID: \u202e".encode() + b"a" * 5000 + b"\r\n")
    assert GENERATED.fullmatch(hostile["x-request-id"])
    _, kept, _ = raw_request(server, head + b"X-Request-ID: ops-1234\r\n")
    assert kept["x-request-id"] == "ops-1234"
