"""`exchange audit list|export|stats` against the trail a real `exchange serve` wrote."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import EXE, exchange, json_lines, post_exchange
from tests.conftest import write_config
from tests.idp import FakeIdP
from tests.server import Server, free_port

Z_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
LONG_PURPOSE = "an-unknown-purpose-whose-name-is-much-too-long-for-a-column"
HOSTILE_SUB = "eve\x1b[2J\x07"


class Trail:
    """A server and the decisions it recorded, by request id."""

    def __init__(self, server: Server, config: Path) -> None:
        self.server, self.config = server, str(config)
        self.granted: list[str] = []
        self.denied: list[str] = []

    def audit(self, *args: str) -> subprocess.CompletedProcess[str]:
        return exchange("audit", *args, "--config", self.config)


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP) -> Iterator[Trail]:
    folder = tmp_path_factory.mktemp("audit")
    port = free_port()
    config = write_config(folder, port, idp, idp_ec)
    server = Server(config, port)
    try:
        server.wait_ready()
        t = Trail(server, config)
        for rid, token, form, granted in [
            ("g1", idp.token(), {}, True),
            ("g2", idp.token(), {}, True),
            ("d-mfa", idp.token(amr=["pwd"]), {}, False),
            ("g3", idp.token(sub="bob"), {}, True),
            ("d-purpose", idp.token(), {"scope": LONG_PURPOSE}, False),
            ("g-hostile", idp.token(sub=HOSTILE_SUB), {}, True),
        ]:
            resp = post_exchange(server, token, rid, **form)
            assert resp.status_code == (200 if granted else 400), resp.text
            (t.granted if granted else t.denied).append(rid)
        yield t
    finally:
        server.stop()


def ids(stdout: str) -> list[str]:
    return [line["request_id"] for line in json_lines(stdout)]


class TestList:
    def test_newest_first_with_utc_times_in_both_outputs(self, trail: Trail) -> None:
        table = trail.audit("list")
        as_json = trail.audit("list", "--json")

        assert table.returncode == 0 and as_json.returncode == 0, table.stderr + as_json.stderr
        assert ids(as_json.stdout) == ["g-hostile", "d-purpose", "g3", "d-mfa", "g2", "g1"]
        header, *rows = table.stdout.splitlines()
        assert header.split() == ["SEQ", "TIME", "DECISION", "CLIENT", "PURPOSE", "SUB", "DETAIL"]
        assert all(re.match(r"^\d+ +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", row) for row in rows), rows
        assert table.stderr == ""  # everything fitted on one page: no note

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (["--sub", "bob"], ["g3"]),
            (["--client", "bank-web", "--decision", "denied"], ["d-purpose", "d-mfa"]),
            (["--decision", "granted", "--sub", "alice"], ["g2", "g1"]),
            (["--denial", "claim_mismatch"], ["d-mfa"]),
            (["--request-id", "g2"], ["g2"]),
            (["--purpose", "payments.approve", "--sub", "bob"], ["g3"]),
            (["--purpose", LONG_PURPOSE], ["d-purpose"]),
            (["--since", "1h", "--request-id", "g1"], ["g1"]),
            (["--until", "1h"], []),
            (["--since", "2999-01-01T00:00:00Z"], []),
        ],
    )
    def test_each_filter_narrows_to_exactly_the_matching_records(
        self, trail: Trail, args: list[str], expected: list[str]
    ) -> None:
        result = trail.audit("list", "--json", *args)
        assert result.returncode == 0, result.stderr
        assert ids(result.stdout) == expected

    def test_a_jti_finds_the_decision_that_issued_the_token(self, trail: Trail) -> None:
        [g2] = json_lines(trail.audit("list", "--json", "--request-id", "g2").stdout)
        assert ids(trail.audit("list", "--json", "--jti", g2["jti"]).stdout) == ["g2"]

    def test_json_lines_carry_every_field_with_z_times(self, trail: Trail) -> None:
        lines = json_lines(trail.audit("list", "--json").stdout)
        fields = {"seq", "time", "request_id", "decision", "client_id", "issuer", "sub", "purpose",
                  "audience", "error", "denial", "reason", "jti", "exp", "actor", "rules",
                  "trace_id", "txn"}  # fmt: skip
        assert all(set(line) == fields for line in lines)
        assert all(Z_TIME.match(line["time"]) for line in lines)
        granted = [line for line in lines if line["decision"] == "granted"]
        assert granted and all(Z_TIME.match(line["exp"]) for line in granted)
        [denied] = [line for line in lines if line["request_id"] == "d-mfa"]
        assert (denied["error"], denied["denial"], denied["jti"], denied["exp"]) == (
            "invalid_request",
            "claim_mismatch",
            None,
            None,
        )
        assert denied["rules"] == [{"rule": "claim[amr]", "outcome": "deny", "code": "claim_mismatch"}]

    def test_pages_follow_the_printed_cursor_to_every_record_once(self, trail: Trail) -> None:
        seen: list[str] = []
        args = ["list", "--json", "--limit", "2"]
        for _ in range(10):
            page = trail.audit(*args)
            assert page.returncode == 0, page.stderr
            seen += ids(page.stdout)
            more = re.search(r"more rows: use --before (\d+)", page.stderr)
            if more is None:
                break
            args = ["list", "--json", "--limit", "2", "--before", more.group(1)]
        assert seen == ["g-hostile", "d-purpose", "g3", "d-mfa", "g2", "g1"]

    def test_a_cut_value_is_marked_and_control_characters_are_shown_escaped(self, trail: Trail) -> None:
        table = trail.audit("list")
        [purpose_row] = [row for row in table.stdout.splitlines() if "invalid_scope" in row]
        assert LONG_PURPOSE not in purpose_row and "an-unknown-purpose-whose-na…" in purpose_row
        [hostile_row] = [row for row in table.stdout.splitlines() if "eve" in row]
        assert "\x1b" not in table.stdout and "\x07" not in table.stdout
        assert r"eve\x1b[2J\x07" in hostile_row
        # JSON output is for programs: the full values, JSON-escaped.
        lines = json_lines(trail.audit("list", "--json").stdout)
        assert {line["purpose"] for line in lines} >= {LONG_PURPOSE}
        assert HOSTILE_SUB in {line["sub"] for line in lines}

    def test_a_time_without_a_zone_is_a_usage_error_naming_the_fix(self, trail: Trail) -> None:
        result = trail.audit("list", "--since", "2026-11-29T10:00:00")
        assert result.returncode == 2
        assert "has no time zone: write it in UTC with Z" in result.stderr


class TestStats:
    def test_counts_by_decision_error_and_denial(self, trail: Trail) -> None:
        result = trail.audit("stats", "--json")
        assert result.returncode == 0, result.stderr
        counts = {(c["decision"], c["error"], c["denial"]): c["count"] for c in json_lines(result.stdout)}
        assert counts == {
            ("granted", None, None): 4,
            ("denied", "invalid_request", "claim_mismatch"): 1,
            ("denied", "invalid_scope", None): 1,
        }

    def test_filters_apply_and_the_table_has_a_total(self, trail: Trail) -> None:
        result = trail.audit("stats", "--since", "1h", "--sub", "alice")
        assert result.returncode == 0, result.stderr
        # g1, g2, d-mfa: d-purpose was refused before its subject token was read, so it has no sub.
        assert result.stdout.splitlines()[-1] == "total 3"


class TestExport:
    def test_resuming_after_the_last_seq_seen_loses_and_repeats_nothing(self, trail: Trail) -> None:
        everything = trail.audit("export")
        assert everything.returncode == 0, everything.stderr
        full = json_lines(everything.stdout)
        assert [line["request_id"] for line in full] == ["g1", "g2", "d-mfa", "g3", "d-purpose", "g-hostile"]
        assert f"resume with --after {full[-1]['seq']}" in everything.stderr

        first = json_lines(trail.audit("export", "--batch", "2", "--after", "0").stdout)
        rest = json_lines(trail.audit("export", "--after", str(full[2]["seq"])).stdout)

        assert first == full
        assert full[:3] + rest == full

    def test_follow_streams_new_records_and_stops_cleanly_on_sigterm(
        self, trail: Trail, idp: FakeIdP
    ) -> None:
        last = json_lines(trail.audit("export").stdout)[-1]["seq"]
        follower = subprocess.Popen(
            [
                EXE,
                "audit",
                "export",
                "--follow",
                "--interval",
                "0.1",
                "--after",
                str(last),
                "--config",
                trail.config,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert post_exchange(trail.server, idp.token(), "followed").status_code == 200
            line = read_line(follower, timeout=30)
            assert line["request_id"] == "followed" and line["seq"] > last
            follower.send_signal(signal.SIGTERM)
            _, err = follower.communicate(timeout=30)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.communicate()
        assert follower.returncode == 0, err
        assert f"exported 1 record(s); resume with --after {line['seq']}" in err


def read_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The next stdout line of a running process, parsed (fails the test rather than hang)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            [line] = json_lines(proc.stdout.readline())
            return line
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    raise AssertionError("the follower printed nothing")


def test_an_operator_sees_a_clear_sentence_when_the_store_is_down(tmp_path: Path) -> None:
    config = tmp_path / "exchange.toml"
    config.write_text(
        'issuer = "http://127.0.0.1:8080"\n[store]\n'
        f'url = "postgresql://postgres@127.0.0.1:{free_port()}/x"\nconnect_timeout = 1.0\n'
    )
    env = {**os.environ, "EXCHANGE_KEK": "A" * 43}
    result = subprocess.run(
        [EXE, "audit", "list", "--config", str(config)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: the store is unavailable:") and "Traceback" not in result.stderr
