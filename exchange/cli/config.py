"""`exchange config check`: run every start-up check without starting."""

from __future__ import annotations

import asyncio
import logging

import click

from exchange.cli.console import config_option, fail, json_option, settings_or_exit
from exchange.cli.output import emit_object
from exchange.config import config_path
from schemas.output import ConfigSummary, ReloadOutcome


@click.group()
def config() -> None:
    """Validate configuration, and reload it into a running server."""


@config.command("check")
@config_option
# Before --config existed the file was an argument; it still works, but --config is the one way.
@click.argument("legacy_file", metavar="[CONFIG_FILE]", required=False)
@click.option("--connect", is_flag=True, help="Also reach the store and fetch every jwks_uri.")
@json_option
def config_check(config_file: str | None, legacy_file: str | None, connect: bool, as_json: bool) -> None:
    """Run every start-up check without starting: the file, its policies, the KEK, every file it
    names (exit 1 listing every problem); with --connect, the store and each jwks_uri as well."""
    from exchange.preflight import connect as connect_checks

    if config_file and legacy_file and config_file != legacy_file:
        raise click.UsageError("give the config file once: --config FILE")
    path = config_path(config_file or legacy_file)
    settings = settings_or_exit(str(path), preflight=True)
    if connect:
        logging.getLogger("exchange.verify").setLevel(logging.ERROR)  # the problems say it once
        problems = asyncio.run(connect_checks(settings))
        if problems:
            fail(*problems)
    summary = ConfigSummary(
        file=str(path),
        purposes=len(settings.purposes),
        clients=len(settings.clients),
        trusted_issuers=len(settings.trusted_issuers) + (settings.dev_issuer is not None),
    )
    if as_json:
        emit_object(summary)
        return
    click.echo(
        f"{path}: ok ({summary.purposes} purposes, {summary.clients} clients, "
        f"{summary.trusted_issuers} trusted issuers)"
    )


@config.command("reload")
@config_option
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="The server's run directory (default: every server started with this config file).",
)
@click.option(
    "--wait",
    default=15.0,
    show_default=True,
    type=click.FloatRange(0.1, 300),
    help="Seconds to wait for workers.",
)
@json_option
def config_reload(config_file: str | None, run_dir: str | None, wait: float, as_json: bool) -> None:
    """Reload purposes, clients and trusted issuers into running servers (SIGHUP), after running every
    start-up check on the file here first; waits for each worker's outcome (exit 1 if any kept the old)."""
    import os
    import signal
    import time

    from exchange.cli.output import emit_lines
    from exchange.rundir import RunDir, alive, default_run_dir, run_dirs_for

    path = config_path(config_file)
    settings_or_exit(str(path), preflight=True)  # a file that cannot load never reaches the server
    folders = [RunDir(run_dir)] if run_dir else [RunDir(p) for p in run_dirs_for(path)]
    servers = [(folder, pid) for folder in folders if (pid := folder.server_pid()) and _is_server(pid)]
    if not servers:
        where = run_dir or default_run_dir(path, 0).parent
        fail(f"no running `exchange serve` for {path} (looked in {where}); name it with --run-dir")
    asked = time.time()
    for _, pid in servers:
        os.kill(pid, signal.SIGHUP)
    outcomes: list[ReloadOutcome] = []
    for folder, pid in servers:
        deadline = time.monotonic() + wait
        while True:
            workers = [s for s in folder.states() if alive(s.pid)]
            done = [s for s in workers if s.config.last_attempt >= asked]
            if (workers and len(done) == len(workers)) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for state in workers:
            answered = state.config.last_attempt >= asked
            outcomes.append(
                ReloadOutcome(
                    server=pid,
                    worker=state.pid,
                    result=(state.config.last_result or "ok") if answered else "no answer",
                    generation=state.config.generation,
                    restart_needed=state.config.restart_needed if answered else [],
                )
            )
    if as_json:
        emit_lines(outcomes)
    else:
        for o in outcomes:
            if o.result == "ok":
                later = f"; restart to apply: {', '.join(o.restart_needed)}" if o.restart_needed else ""
                click.echo(
                    f"server {o.server}, worker {o.worker}: reloaded (generation {o.generation}){later}"
                )
            else:
                click.echo(
                    f"server {o.server}, worker {o.worker}: kept its configuration: {o.result}", err=True
                )
    if not outcomes or any(o.result != "ok" for o in outcomes):
        raise SystemExit(1)


def _is_server(pid: int) -> bool:
    """The pid file's process is an `exchange serve` (not a process that reused a stale pid)."""
    from pathlib import Path

    try:
        return b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # not Linux: the live pid in our private run directory is all we can go by
