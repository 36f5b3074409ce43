"""One log stream: every line a real server writes (granian's, stdlib loggers', ours) is one JSON object
with the same keys, and each request has one canonical line."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import os
import pty
import re
import select
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import structlog
from structlog.testing import capture_logs

import exchange.logging
from exchange.logging import (
    RequestLine,
    StdlibFormatter,
    configure_logging,
    iso_utc_now,
    record_fields,
    wants_json,
)
from tests.conftest import exchange_form, write_config
from tests.idp import FakeIdP
from tests.server import Server, free_port


def parsed(server: Server) -> list[dict[str, Any]]:
    lines = server.lines()
    assert lines
    records = []
    for line in lines:
        record = json.loads(line)  # every line, whoever wrote it
        assert isinstance(record, dict), line
        assert {"event", "level", "logger", "timestamp"} <= record.keys(), line
        assert record["timestamp"].endswith("Z"), line
        records.append(record)
    return records


def test_every_line_of_a_real_server_is_json(tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP) -> None:
    port = free_port()
    config = write_config(tmp_path, port, idp, idp_ec, extra="\n[logging]\naccess_log = true\n")
    # A symmetric key in an issuer's JWKS is dropped with a warning from exchange.verify, a library
    # that logs through plain stdlib logging.
    jwks_file = tmp_path / "idp-jwks.json"
    jwks = msgspec.json.decode(jwks_file.read_bytes())
    jwks["keys"].append({"kty": "oct", "kid": "shared-secret", "k": "c2VjcmV0"})
    jwks_file.write_bytes(msgspec.json.encode(jwks))
    srv = Server(config, port)
    try:
        srv.wait_ready()
        subject = idp.token()
        ok = httpx.post(f"{srv.url}/token", data=exchange_form(subject), headers={"X-Request-Id": "log-ok-1"})
        assert ok.status_code == 200
        issued_token = ok.json()["access_token"]
        denied = httpx.post(
            f"{srv.url}/token",
            data=exchange_form(idp.token(amr=["pwd"])),
            headers={"X-Request-Id": "log-no-1"},
        )
        assert denied.status_code == 400
        assert httpx.get(f"{srv.url}/.well-known/jwks.json").status_code == 200
    finally:
        srv.stop()
    records = parsed(srv)
    loggers = {r["logger"] for r in records}
    assert {"_granian", "exchange.app", "exchange.verify", "granian.access"} <= loggers

    ignored = [r for r in records if r["event"] == "jwks_key_ignored"]
    assert ignored and ignored[0]["kty"] == "oct" and ignored[0]["kid"] == "shared-secret"
    assert ignored[0]["level"] == "warning"

    # One canonical line per exchange, with its outcome, status and duration.
    (issued,) = [r for r in records if r.get("request_id") == "log-ok-1"]
    assert issued["event"] == "token_issued" and issued["status"] == 200 and issued["duration_ms"] > 0
    assert issued["purpose"] == "payments.approve" and issued["jti"]
    (refused,) = [r for r in records if r.get("request_id") == "log-no-1"]
    assert refused["event"] == "exchange_denied" and refused["status"] == 400 and refused["denial"]

    # granian's access log, when asked for, speaks the same JSON.
    access = [r for r in records if r["event"] == "http_access" and r.get("path") == "/.well-known/jwks.json"]
    assert access and access[0]["status"] == 200 and access[0]["method"] == "GET"
    lines = [r for r in records if r["event"] == "http_request" and r.get("path") == "/.well-known/jwks.json"]
    assert lines and lines[0]["status"] == 200
    text = srv.log.read_text()
    assert subject not in text and issued_token not in text  # never a token in the logs


def test_a_request_refused_before_the_exchange_still_has_its_line(server: Server) -> None:
    resp = httpx.post(
        f"{server.url}/token",
        content=b"{}",
        headers={"Content-Type": "application/json", "X-Request-Id": "ctype-1"},
    )
    assert resp.status_code == 400
    (line,) = [json.loads(x) for x in server.lines() if '"ctype-1"' in x]
    assert line["event"] == "http_request" and line["status"] == 400 and line["error"] == "invalid_request"


class TestStdlibRecords:
    def test_event_and_fields_come_from_the_message_template(self) -> None:
        template = "jwks_fetch_failed uri=%s error=%s stale_for=%.0f"
        args = ("https://idp/jwks", "ConnectError: refused", 12.6)
        record = logging.LogRecord("exchange.verify", logging.WARNING, __file__, 1, template, args, None)
        assert record_fields(record) == {
            "event": "jwks_fetch_failed",
            "uri": "https://idp/jwks",
            "error": "ConnectError: refused",
            "stale_for": 12.6,
        }

    def test_any_other_message_keeps_its_text(self) -> None:
        record = logging.LogRecord(
            "httpx", logging.INFO, __file__, 1, "HTTP Request: %s %s", ("GET", "/x"), None
        )
        assert record_fields(record) == {"event": "HTTP Request: GET /x"}

    def test_a_traceback_stays_inside_the_json_line(self) -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
        line = StdlibFormatter(json=True).format(record)
        assert "\n" not in line
        assert "ValueError: boom" in json.loads(line)["exception"]


def test_a_terminal_gets_the_console_renderer_and_a_pipe_gets_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXCHANGE_LOG_FORMAT", raising=False)
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            assert not wants_json("auto", tty)
        read, write = os.pipe()
        with os.fdopen(write, "w") as pipe:
            assert wants_json("auto", pipe)
        os.close(read)
        with os.fdopen(follower, "w", closefd=False) as tty:
            assert wants_json("json", tty)  # asked for explicitly, it wins
    finally:
        os.close(leader)
        os.close(follower)


class TestRequestLine:
    """The placements' fast canonical line is the line structlog would have written."""

    @pytest.fixture
    def stream(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
        saved = structlog.get_config()
        handlers = logging.getLogger().handlers[:]
        level = logging.getLogger().level
        buffer = io.StringIO()
        # Patched when the test asks (pytest puts its own capture back on sys.stderr after setup).
        yield buffer
        structlog.configure(**saved)
        logging.getLogger().handlers[:] = handlers
        logging.getLogger().setLevel(level)

    def test_the_same_json_line_as_structlog(
        self, stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(sys, "stderr", stream)
        configure_logging(json=True)
        fields = {"method": "GET", "path": "/a\u202eb", "status": 200, "reason": None, "ms": 0.42}
        structlog.get_logger("exchange.ambassador").info("ambassador_request", **fields)
        with structlog.contextvars.bound_contextvars(request_id="r-1"):
            structlog.get_logger("exchange.ambassador").info("ambassador_request", **fields)
            RequestLine("exchange.ambassador").info("ambassador_request", **fields)
        RequestLine("exchange.ambassador").info("ambassador_request", **fields)
        slow, slow_bound, fast_bound, fast = stream.getvalue().splitlines()
        assert "\u202e" not in fast  # the same terminal-safe escapes
        for line in (slow, slow_bound, fast_bound, fast):
            assert json.loads(line)["timestamp"].endswith("Z")

        def without_time(line: str) -> dict[str, Any]:
            return {k: v for k, v in json.loads(line).items() if k != "timestamp"}

        assert without_time(fast) == without_time(slow)
        assert (
            without_time(fast_bound)
            == without_time(slow_bound)
            == {**without_time(slow), "request_id": "r-1"}
        )

    def test_any_other_configuration_gets_structlog_itself(
        self, stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(sys, "stderr", stream)
        configure_logging(json=True, level="WARNING")
        RequestLine("exchange.gateway").info("gateway_check", status=200)
        assert stream.getvalue() == ""  # filtered like any info event
        configure_logging(json=True)
        with capture_logs() as logs:
            RequestLine("exchange.gateway").info("gateway_check", status=200)
        assert logs == [{"event": "gateway_check", "status": 200, "log_level": "info"}]
        assert stream.getvalue() == ""
        configure_logging(json=False)
        RequestLine("exchange.gateway").info("gateway_check", status=200)
        line = stream.getvalue()
        assert "gateway_check" in line and not line.startswith("{")

    def test_lines_of_one_loop_turn_leave_in_one_write(
        self, stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        writes: list[str] = []

        class Counting(io.StringIO):
            def write(self, text: str) -> int:
                writes.append(text)
                return super().write(text)

        counting = Counting()
        monkeypatch.setattr(sys, "stderr", counting)
        configure_logging(json=True)
        line = RequestLine("exchange.ambassador")

        async def turn() -> None:
            for status in (200, 401, 403):
                line.info("ambassador_request", status=status)
            assert counting.getvalue() == ""  # not yet: at the end of this turn
            await asyncio.sleep(0)
            assert [json.loads(text)["status"] for text in counting.getvalue().splitlines()] == [
                200,
                401,
                403,
            ]
            for n in range(600):  # a runaway turn is bounded
                line.info("ambassador_request", status=n)
            assert len(writes) >= 3

        asyncio.run(turn())
        assert len(counting.getvalue().splitlines()) == 603
        line.info("ambassador_request", status=204)  # no loop: written at once
        assert json.loads(counting.getvalue().splitlines()[-1])["status"] == 204

    def test_an_immediate_line_is_written_before_it_returns(
        self, stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The exchange's decision line: in the stream before the answer is sent, even inside a loop.
        monkeypatch.setattr(sys, "stderr", stream)
        configure_logging(json=True)
        batched = RequestLine("exchange.gateway")
        decision = RequestLine("exchange.audit", immediate=True)

        async def turn() -> None:
            batched.info("gateway_check", status=401)
            decision.info("token_issued", status=200, request_id="r-2")
            # Written at once, and the line queued before it first: the stream keeps their order.
            assert [json.loads(x)["event"] for x in stream.getvalue().splitlines()] == [
                "gateway_check",
                "token_issued",
            ]
            await asyncio.sleep(0)
            assert len(stream.getvalue().splitlines()) == 2  # nothing left queued to write twice

        asyncio.run(turn())
        first = json.loads(stream.getvalue().splitlines()[1])
        assert first["request_id"] == "r-2" and first["logger"] == "exchange.audit"

    def test_the_timestamp_is_the_one_structlog_writes(self) -> None:
        pattern = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?Z")
        for _ in range(2000):  # across second boundaries too, now and then
            before = datetime.datetime.now(datetime.UTC)
            stamp = iso_utc_now()
            after = datetime.datetime.now(datetime.UTC)
            theirs = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})["timestamp"]
            assert pattern.fullmatch(stamp) and pattern.fullmatch(theirs), (stamp, theirs)
            parsed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            # Rounded to the microsecond, as datetime.now rounds the clock.
            assert (
                before - datetime.timedelta(microseconds=1)
                <= parsed
                <= after + datetime.timedelta(microseconds=1)
            )


class _Writes(io.RawIOBase):
    """A raw stream that keeps each write(2)-sized call, under the buffered text layers stdout has."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.calls.append(bytes(data))
        return len(data)


@pytest.mark.parametrize("letter", ["ü", "u"])  # ASCII batches are cut without encoding them
@pytest.mark.parametrize("count", [1, 3, 40, 257])
def test_a_batch_of_lines_leaves_in_whole_lines_of_at_most_pipe_buf_bytes_per_write(
    count: int, letter: str
) -> None:
    # Workers share one stdout pipe and only writes of at most PIPE_BUF bytes are atomic: a longer one
    # can take another worker's line into the middle of one of ours (seen in test_reload under load).
    raw = _Writes()
    stream = io.TextIOWrapper(io.BufferedWriter(raw, buffer_size=8192), encoding="utf-8")
    lines = [
        json.dumps({"event": "http_request", "n": n, "sub": letter * (n % 300 or 9000)}, ensure_ascii=False)
        + "\n"
        for n in range(count)
    ]  # n = 0: a line longer than PIPE_BUF, which leaves whole, alone
    exchange.logging._write(stream, "".join(lines))
    assert b"".join(raw.calls).decode() == "".join(lines)
    for call in raw.calls:
        assert call.endswith(b"\n")
        assert len(call) <= select.PIPE_BUF or call.count(b"\n") == 1
    if count == 257:
        assert len(raw.calls) > 1
