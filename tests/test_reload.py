"""Live configuration: `exchange config reload` (SIGHUP) swaps purposes, clients and trusted issuers in
every worker of a real two-worker server while a steady stream of exchanges goes on, losing none; a
file that does not validate changes nothing; what needs a restart says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from tests.conftest import exchange_form, write_config
from tests.idp import FakeIdP
from tests.server import Server, free_port
from tests.test_metrics import scrape, value, wait_for

EXE = str(Path(sys.executable).with_name("exchange"))
NEW_PURPOSE = """
[purposes."reports.read"]
audience = "https://reports.internal"
ttl = 60
"""


def reload(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, "config", "reload", "--config", str(config), *args], capture_output=True, text=True, timeout=60
    )


def test_reload_under_load_loses_no_request_and_reaches_every_worker(
    tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP
) -> None:
    port = free_port()
    config = write_config(tmp_path, port, idp, idp_ec)
    server = Server(config, port, args=("--workers", "2"))
    tokens = [idp.token(sub=f"user-{i}") for i in range(40)]
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:  # a steady stream of exchanges, over new connections (both workers)
        with httpx.Client(timeout=30) as http:
            i = 0
            while not stop.is_set():
                resp = http.post(
                    f"{server.url}/token",
                    data=exchange_form(tokens[i % len(tokens)]),
                    headers={"Connection": "close"},
                )
                statuses.append(resp.status_code)
                i += 1

    try:
        server.wait_ready()
        new = exchange_form(idp.token(), scope="reports.read")
        assert httpx.post(f"{server.url}/token", data=new).json()["error"] == "invalid_scope"

        streams = [threading.Thread(target=load) for _ in range(3)]
        for stream in streams:
            stream.start()
        wait_for(lambda: len(statuses) >= 20)
        text = config.read_text().replace(
            'purposes = ["payments.approve", "customer.export"]',
            'purposes = ["payments.approve", "customer.export", "reports.read"]',
        )
        config.write_text(text + NEW_PURPOSE)
        result = reload(config)
        during = len(statuses)
        wait_for(lambda: len(statuses) >= during + 20)
        stop.set()
        for stream in streams:
            stream.join()

        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 2 and all("reloaded (generation 1)" in line for line in lines), result.stdout
        assert statuses and set(statuses) == {200}, f"{len(statuses)} requests, not all 200: {set(statuses)}"
        # The new purpose is served by every worker (new connections land on both).
        for _ in range(10):
            resp = httpx.post(f"{server.url}/token", data=new, headers={"Connection": "close"})
            assert resp.status_code == 200, resp.text
        metadata = httpx.get(f"{server.url}/.well-known/oauth-authorization-server").json()
        assert "reports.read" in metadata["scopes_supported"]

        def both_counted() -> bool:
            samples = scrape(f"{server.url}/metrics")
            return value(samples, "purpose_exchange_config_reloads_total", result="ok") == 2

        wait_for(both_counted)
        logged = [json.loads(line) for line in server.lines() if '"config_reloaded"' in line]
        assert len(logged) == 2 and {r["generation"] for r in logged} == {1}
    finally:
        stop.set()
        server.stop()


def test_a_bad_file_changes_nothing_and_a_restart_only_change_says_so(
    tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP
) -> None:
    port = free_port()
    config = write_config(tmp_path, port, idp, idp_ec)
    good = config.read_text()
    server = Server(config, port)
    try:
        server.wait_ready()
        # The CLI runs every start-up check first: a broken file is refused before any server hears of it.
        config.write_text(good.replace('purposes = ["customer.export"]', 'purposes = ["no.such.purpose"]', 1))
        refused = reload(config)
        assert refused.returncode == 1 and "no.such.purpose" in refused.stderr
        assert "Traceback" not in refused.stderr
        # A SIGHUP straight to the server with that file: the workers keep what they run.
        server_pid = server.proc.pid
        os.kill(server_pid, signal.SIGHUP)
        wait_for(lambda: any('"config_reload_failed"' in line for line in server.lines()))
        (failed,) = [json.loads(line) for line in server.lines() if '"config_reload_failed"' in line]
        assert any("no.such.purpose" in p for p in failed["problems"])
        assert httpx.post(f"{server.url}/token", data=exchange_form(idp.token())).status_code == 200
        samples = scrape(f"{server.url}/metrics")
        assert value(samples, "purpose_exchange_config_reloads_total", result="error") == 1

        # A section only a restart applies: the rest is reloaded, and the log and the CLI say which.
        config.write_text(good.replace("[store]", "[signing]\njwks_max_age = 60\n\n[store]", 1))
        result = reload(config)
        assert result.returncode == 0, result.stderr
        assert "restart to apply: signing" in result.stdout
        restart = [json.loads(line) for line in server.lines() if '"config_restart_required"' in line]
        assert restart and restart[0]["sections"] == ["signing"]
        jwks = httpx.get(f"{server.url}/.well-known/jwks.json")
        assert jwks.headers["cache-control"] == "public, max-age=300"  # the running value
    finally:
        server.stop()


def test_reload_without_a_running_server_is_one_sentence(
    tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP
) -> None:
    config = write_config(tmp_path, free_port(), idp, idp_ec)
    result = reload(config)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: no running `exchange serve` for {config}")
    assert "Traceback" not in result.stderr
