"""A terminal never receives an attacker's escape sequence: request-supplied text (sub, scope,
client_id) recorded through real HTTP comes out of every command, and the service's logs, escaped.

"Printable" is Python's `str.isprintable` per line: false for C0 controls (ESC, BEL), DEL, C1 controls
(the one-character CSI U+009B, NEL U+0085), bidi overrides (U+202E), zero-width and line separators."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.cli.conftest import exchange, post_exchange
from tests.conftest import write_config
from tests.idp import FakeIdP
from tests.server import Server, free_port

# OSC 52 writes the clipboard, CSI 2J clears the screen, U+009B is CSI in one character, U+202E
# reverses what follows, U+2028/U+0085 break lines, U+200B hides.
ESCAPES = "\x1b]52;c;cHduZWQ=\x07\x1b[2J\x9b31m\u202e\u200b"
HOSTILE_SUB = "eve" + ESCAPES + "\u2028\x85"
HOSTILE_SCOPE = "pay" + ESCAPES  # no whitespace: one (unknown) purpose, recorded as asked
HOSTILE_CLIENT = "cli" + ESCAPES


def assert_printable(output: str) -> None:
    for line in output.splitlines():
        assert line.isprintable(), ascii(line)
    assert "\x1b" not in output and "\x9b" not in output and "\u202e" not in output


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("hostile")
    port = free_port()
    server = Server(write_config(folder, port, idp, idp_ec), port)
    try:
        server.wait_ready()
        assert post_exchange(server, idp.token(sub=HOSTILE_SUB), "h-sub").status_code == 200
        scoped = post_exchange(server, idp.token(), "h-scope", scope=HOSTILE_SCOPE)
        assert scoped.json()["error"] == "invalid_scope"
        unknown = post_exchange(server, idp.token(), "h-client", client_id=HOSTILE_CLIENT)
        assert unknown.json()["error"] == "invalid_client"
        yield server
    finally:
        server.stop()


def run(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    result = exchange(*args, "--config", str(server.config))
    assert result.returncode == 0, result.stderr
    return result


def test_audit_list_shows_hostile_values_escaped(hostile: Server) -> None:
    table = run(hostile, "audit", "list", "--limit", "100")
    assert_printable(table.stdout + table.stderr)
    assert r"eve\x1b]52;c;" in table.stdout and r"pay\x1b]52;c;" in table.stdout  # cut to the column


@pytest.mark.parametrize("command", [["audit", "list", "--json"], ["audit", "export"]])
def test_json_output_is_printable_and_keeps_the_exact_values(hostile: Server, command: list[str]) -> None:
    result = run(hostile, *command)
    assert_printable(result.stdout + result.stderr)
    records = {r["request_id"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert records["h-sub"]["sub"] == HOSTILE_SUB
    assert records["h-scope"]["purpose"] == HOSTILE_SCOPE


def test_counted_unauthenticated_denials_show_the_client_id_escaped(hostile: Server) -> None:
    # Refused before authenticating: counted, not recorded; its row shows the client_id as given.
    assert hostile.denial_count(client_id=HOSTILE_CLIENT)["reason"] == "unknown_client"
    table = run(hostile, "audit", "unauthenticated")
    assert_printable(table.stdout + table.stderr)
    assert r"cli\x1b]52;c;" in table.stdout
    as_json = run(hostile, "audit", "unauthenticated", "--json")
    assert_printable(as_json.stdout)
    [row] = [r for r in map(json.loads, as_json.stdout.splitlines()) if r["client_id"] == HOSTILE_CLIENT]
    assert (row["reason"], row["error"], row["count"], row["source"]) == (
        "unknown_client",
        "invalid_client",
        1,
        "127.0.0.1",
    )
    assert row["window_start"].endswith("Z") and row["window_seconds"] == 1


def test_explaining_a_recorded_decision_escapes_its_subject(hostile: Server) -> None:
    result = run(hostile, "rules", "explain", "payments.approve", "--request-id", "h-sub")
    assert_printable(result.stdout + result.stderr)
    assert r"eve\x1b]52;c;" in result.stdout


def test_the_service_log_is_printable(hostile: Server) -> None:
    log = hostile.log.read_text()
    assert_printable(log)
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert HOSTILE_SUB in {line.get("sub") for line in lines}  # escaped as JSON, not lost


def test_the_console_log_renderer_escapes_request_text() -> None:
    # The renderer used when the service runs on a terminal; a subprocess keeps structlog's global
    # configuration out of this test process.
    code = (
        "import structlog\n"
        "from exchange.logging import configure_logging\n"
        "configure_logging(json=False)\n"
        f"structlog.get_logger('t').info('exchange_denied', sub={HOSTILE_SUB!r}, rules=[{HOSTILE_SCOPE!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "exchange_denied" in result.stderr
    # The renderer colours its output with SGR sequences of its own; everything else must be printable.
    assert_printable(re.sub(r"\x1b\[[0-9;]*m", "", result.stderr))
    assert r"\x1b]52;c;" in result.stderr


def test_printable_leaves_ordinary_text_alone() -> None:
    from exchange.text import json_printable, printable

    for text in ["alice@bank.example", "Zoë Łukasiewicz", "用户", "emoji 🙂", "DOMAIN\\user"]:
        assert printable(text) == text
        encoded = json.dumps(text, ensure_ascii=False)
        assert json_printable(encoded) == encoded
    assert (
        json.loads(json_printable(json.dumps("\U000e0001x\u202e", ensure_ascii=False))) == "\U000e0001x\u202e"
    )
