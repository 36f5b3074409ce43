"""Tracing: a real server exports OTLP spans to a real (loopback) receiver, continuing the caller's
W3C traceparent, one span per step; the trace id reaches the answer and the log line."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import exchange_form, write_config
from tests.idp import FakeIdP
from tests.server import Server, free_port

STEPS = ("exchange.client_auth", "exchange.trust", "exchange.rules", "exchange.mint", "exchange.audit")


class Collector:
    """An OTLP/HTTP trace receiver: decodes every export request into plain span dicts."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            collector.spans.append(
                                {
                                    "name": span.name,
                                    "trace_id": span.trace_id.hex(),
                                    "span_id": span.span_id.hex(),
                                    "parent": span.parent_span_id.hex(),
                                    "attributes": {a.key: a.value.string_value or a.value.int_value
                                                   for a in span.attributes},
                                    "error": span.status.code == 2,
                                }
                            )  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = [s for s in self.spans if s["trace_id"] == trace_id]
            if len(spans) >= count:
                return spans
            time.sleep(0.1)
        raise AssertionError(f"{count} spans of {trace_id} not received; got {self.spans}")


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.shutdown()
    c.server.server_close()


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP, collector: Collector
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("traced")
    port = free_port()
    extra = f'\n[tracing]\nenabled = true\nendpoint = "{collector.url}"\n'
    # Export batches every 100 ms instead of every 5 s (the SDK's standard variable).
    srv = Server(
        write_config(folder, port, idp, idp_ec, extra=extra), port, env={"OTEL_BSP_SCHEDULE_DELAY": "100"}
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_a_granted_exchange_continues_the_callers_trace_with_a_span_per_step(
    traced: Server, collector: Collector, idp: FakeIdP
) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    resp = httpx.post(
        f"{traced.url}/token",
        data=exchange_form(idp.token()),
        headers={"traceparent": f"00-{trace_id}-{parent}-01", "X-Request-Id": "traced-1"},
    )
    assert resp.status_code == 200
    version, answered_trace, server_span, flags = resp.headers["traceresponse"].split("-")
    assert (version, answered_trace, flags) == ("00", trace_id, "01")

    spans = {s["name"]: s for s in collector.trace(trace_id, 1 + len(STEPS))}
    root = spans["POST /token"]
    assert root["parent"] == parent and root["span_id"] == server_span
    assert root["attributes"]["exchange.request_id"] == "traced-1"
    assert root["attributes"]["exchange.decision"] == "granted"
    assert root["attributes"]["http.response.status_code"] == 200
    for step in STEPS:
        assert spans[step]["parent"] == server_span, step
        assert not spans[step]["error"]

    (line,) = [json.loads(x) for x in traced.lines() if '"traced-1"' in x]
    assert line["trace_id"] == trace_id
    assert traced.audit("traced-1")["trace_id"] == trace_id  # the audit record leads to its trace


def test_a_denial_is_recorded_on_its_step_without_failing_the_trace(
    traced: Server, collector: Collector, idp: FakeIdP
) -> None:
    trace_id = secrets.token_hex(16)
    resp = httpx.post(
        f"{traced.url}/token",
        data=exchange_form(idp.token(amr=["pwd"])),
        headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
    )
    assert resp.status_code == 400
    spans = {s["name"]: s for s in collector.trace(trace_id, 5)}  # auth, trust, rules, audit, server
    assert "exchange.mint" not in spans
    assert spans["exchange.rules"]["attributes"]["exchange.error"] == "invalid_request"
    assert not any(s["error"] for s in spans.values())
    assert spans["POST /token"]["attributes"]["exchange.denial"] == resp.json()["denial"]


def test_without_a_valid_traceparent_a_new_trace_starts(
    traced: Server, collector: Collector, idp: FakeIdP
) -> None:
    resp = httpx.post(
        f"{traced.url}/token", data=exchange_form(idp.token()), headers={"traceparent": "garbage"}
    )
    assert resp.status_code == 200
    trace_id = resp.headers["traceresponse"].split("-")[1]
    assert trace_id != "0" * 32
    (root,) = [s for s in collector.trace(trace_id, 6) if s["name"] == "POST /token"]
    assert root["parent"] == ""


def test_the_service_needs_no_opentelemetry_unless_tracing_is_on(
    tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP
) -> None:
    """Import the app and check configs with every opentelemetry module made unimportable."""
    plain = write_config(tmp_path, free_port(), idp, idp_ec)
    traced_config = tmp_path / "traced.toml"
    traced_config.write_text(plain.read_text() + "\n[tracing]\nenabled = true\n")
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import exchange.app, exchange.service, exchange.cli
from click.testing import CliRunner
ok = CliRunner().invoke(exchange.cli.main, ["config", "check", "--config", {str(plain)!r}])
assert ok.exit_code == 0, ok.output
bad = CliRunner().invoke(exchange.cli.main, ["config", "check", "--config", {str(traced_config)!r}])
print(bad.exit_code, bad.output)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("1 ")
    assert (
        "tracing.enabled: OpenTelemetry is not installed; pip install 'purpose-exchange[otel]'" in out.stdout
    )
