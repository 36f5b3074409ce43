"""pytest plugin: run a real `exchange serve` on each store, for tests of behaviour that involves storage.

A test taking `launch` runs twice, on SQLite and on PostgreSQL (a fresh database from `tests/pg.py`);
`launch.start(extra=...)` starts a server on the shared test config plus `extra` TOML, `launch.audit`
reads what the server stored, whichever the backend.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import TEST_AUDIT, new_kek, pg_config, write_config
from tests.idp import FakeIdP
from tests.server import Server, free_port

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


class Launcher:
    def __init__(self, folder: Path, idp: FakeIdP, idp_ec: FakeIdP, pg_url: str | None) -> None:
        self.folder, self.idp, self.idp_ec, self.pg_url = folder, idp, idp_ec, pg_url
        self.servers: list[Server] = []
        # One KEK for every server of a PostgreSQL run, as replicas (or a restart) share one.
        self.env = None if pg_url is None else {"EXCHANGE_KEK": new_kek()}

    @property
    def backend(self) -> str:
        return "sqlite" if self.pg_url is None else "postgres"

    def start(self, extra: str = "", *, audit: str = TEST_AUDIT, ready: bool = True) -> Server:
        folder = self.folder / f"server{len(self.servers)}"
        folder.mkdir()
        port = free_port()
        if self.pg_url is None:
            config = write_config(folder, port, self.idp, self.idp_ec, extra=extra, audit=audit)
        else:
            config = pg_config(folder, port, self.idp, self.idp_ec, self.pg_url, extra=extra, audit=audit)
        server = Server(config, port, env=self.env)
        self.servers.append(server)
        if ready:
            server.wait_ready()
        return server

    def restart(self, server: Server) -> Server:
        """A new process on the same config and store (the old one stopped first)."""
        server.stop()
        again = Server(server.config, server.port, env=self.env)
        self.servers.append(again)
        again.wait_ready()
        return again

    async def execute(self, sql: str, *params: Any) -> None:
        """One statement on the store the servers use (`$n` parameters on both backends)."""
        if self.pg_url is None:
            conn = sqlite3.connect(self.folder / "server0" / "exchange.db")
            try:
                with conn:
                    conn.execute(sql.replace("$", "?"), params)
            finally:
                conn.close()
            return
        db = await asyncpg.connect(self.pg_url)
        try:
            await db.execute(sql, *params)
        finally:
            await db.close()

    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        """Rows of a query on the store the servers use (`$n` parameters on both backends)."""
        if self.pg_url is None:
            with sqlite3.connect(self.folder / "server0" / "exchange.db") as conn:
                conn.row_factory = sqlite3.Row
                rows = [dict(r) for r in conn.execute(sql.replace("$", "?"), params).fetchall()]
            conn.close()
            return rows
        db = await asyncpg.connect(self.pg_url)
        try:
            return [dict(r) for r in await db.fetch(sql, *params)]
        finally:
            await db.close()

    async def audit(self, request_id: str) -> dict[str, Any]:
        rows = await self.fetch("SELECT * FROM audit_records WHERE request_id = $1", request_id)
        assert len(rows) == 1, f"{len(rows)} audit records for {request_id}"
        return rows[0]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(params=BACKENDS)
def launch(
    request: pytest.FixtureRequest, tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP
) -> Iterator[Launcher]:
    # Only the PostgreSQL run asks for a server, so SQLite runs never skip for want of one.
    pg_url = str(request.getfixturevalue("pg_url")) if request.param == "postgres" else None
    launcher = Launcher(tmp_path, idp, idp_ec, pg_url)
    try:
        yield launcher
    finally:
        launcher.stop()
