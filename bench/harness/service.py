"""A real Purpose Exchange for a bench: config, store, and the server started as a user starts it.

`launcher="serve"` runs `exchange serve --config ... --port ... --workers N`; `launcher="granian"`
runs granian on the app factory (`exchange.app:app_from_env`, config from $EXCHANGE_CONFIG), the
way a deployment behind its own granian command does. The purpose `payments.approve` has three
rules (mfa, amr contains mfa, max_auth_age). The client authenticates with client_secret_basic
(its secret hashed by `exchange clients hash-secret`), or not at all with `client_auth="none"`.
PostgreSQL runs get a throwaway database, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from harness.idp import FakeIdP
from harness.procs import BIN, SERVER_CPUS, Process, cpu_seconds, free_port, pids_named, pin

PG_ADMIN_DSN = os.environ.get("PURPOSE_EXCHANGE_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
CLIENT_ID = "bank-web"
PURPOSE = "payments.approve"
AUDIENCE = "https://payments.internal"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"

_CONFIG = """
issuer = "http://127.0.0.1:{port}"

[store]
url = "{store_url}"

[signing]
algorithm = "ES256"

[[trusted_issuers]]
issuer = "{issuer}"
jwks_file = "{jwks}"
audiences = ["{subject_audience}"]
algorithms = ["{alg}"]

[[clients]]
client_id = "{client_id}"
tokens_issued_to = ["{subject_audience}"]  # the bench IdP audiences its tokens to the exchange only
auth_method = "{auth}"
{secret}purposes = ["{purpose}"]

[purposes."{purpose}"]
audience = "{audience}"
ttl = 60
rules = [
  {{ rule = "mfa" }},
  {{ rule = "claim", claim = "amr", contains = "mfa" }},
  {{ rule = "max_auth_age", seconds = 3600 }},
]
"""


async def _pg(dsn: str, sql: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return list(await conn.fetch(sql, timeout=60))
    finally:
        await conn.close()


def pg(dsn: str, sql: str) -> list[Any]:
    return asyncio.run(_pg(dsn, sql))


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


@dataclass
class PgUsage:
    """PostgreSQL's share of a phase: CPU of this database's backends and of every postgres process
    (the WAL writer and checkpointer, but also other users of the server), commits, WAL bytes."""

    ex: Exchange
    pids: list[int]
    cpu: dict[int, float]  # every postgres process at the start: its CPU seconds so far
    commits: int
    wal: int

    def since(self, exchanges: int) -> dict[str, float]:
        if not self.pids:
            return {}
        n = max(1, exchanges)
        now = self.ex.pg_usage()
        # Only processes alive at both ends count: others' backends come and go meanwhile.
        delta = {p: now.cpu[p] - c for p, c in self.cpu.items() if p in now.cpu}
        return {
            "backend_us": 1e6 * sum(delta.get(p, 0.0) for p in self.pids) / n,
            "all_us": 1e6 * sum(delta.values()) / n,
            "per_commit": n / max(1, now.commits - self.commits),
            "wal_bytes": (now.wal - self.wal) / n,
        }


@dataclass
class Exchange:
    """One configured service; `start()` runs it, `close()` stops it and drops its database."""

    workdir: Path
    store: str  # "sqlite" | "postgres"
    idp: FakeIdP
    client_auth: str = "client_secret_basic"
    launcher: str = "serve"
    workers: int = 1
    cpus: str = SERVER_CPUS
    pg_admin_dsn: str = PG_ADMIN_DSN
    port: int = field(default_factory=free_port)
    server: Process | None = None
    database: str | None = None
    _secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def __post_init__(self) -> None:
        if self.store not in ("sqlite", "postgres"):
            raise ValueError(f"unknown store {self.store!r}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env: dict[str, str] = {}
        if self.store == "sqlite":
            self.store_url = f"sqlite:///{self.workdir / 'exchange.db'}"
        else:
            self.database = f"bench_{os.getpid()}_{secrets.token_hex(4)}"
            pg(self.pg_admin_dsn, f'CREATE DATABASE "{self.database}"')
            self.store_url = with_database(self.pg_admin_dsn, self.database)
            self.env["EXCHANGE_KEK"] = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        self.config = self.workdir / "exchange.toml"
        self.config.write_text(
            _CONFIG.format(
                port=self.port,
                store_url=self.store_url,
                issuer=self.idp.issuer,
                jwks=self.idp.write_jwks(self.workdir / "idp-jwks.json"),
                subject_audience=self.idp.audience,
                alg=self.idp.alg,
                client_id=CLIENT_ID,
                auth=self.client_auth,
                secret=f'secret_hash = "{self._hash_secret()}"\n' if self.client_auth != "none" else "",
                purpose=PURPOSE,
                audience=AUDIENCE,
            )
        )

    def _hash_secret(self) -> str:
        """The CLI's own hashing (`exchange clients hash-secret`, secret on stdin)."""
        out = subprocess.run(
            [str(BIN / "exchange"), "clients", "hash-secret"],
            input=self._secret + "\n",
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return out.stdout.strip()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        if self.launcher == "serve":
            run = [str(BIN / "exchange"), "serve", "--config", str(self.config), "--port", str(self.port)]
            return [*run, "--workers", str(self.workers)]
        if self.launcher == "granian":
            return [
                str(BIN / "granian"),
                "--interface",
                "asgi",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                "--no-access-log",
                "--factory",
                "exchange.app:app_from_env",
            ]
        raise ValueError(f"unknown launcher {self.launcher!r}")

    def start(self) -> Process:
        env = {**self.env, "EXCHANGE_CONFIG": str(self.config)}
        self.server = Process("exchange", [*pin(self.cpus), *self.argv()], env=env, cwd=self.workdir)
        self.server.wait_http(f"{self.url}/readyz")
        return self.server

    def headers(self, request_id: str | None = None) -> dict[str, str]:
        h = {"Content-Type": "application/x-www-form-urlencoded"}
        if self.client_auth == "client_secret_basic":
            h["Authorization"] = "Basic " + base64.b64encode(f"{CLIENT_ID}:{self._secret}".encode()).decode()
        if request_id:
            h["X-Request-Id"] = request_id
        return h

    def form(self, subject_token: str) -> str:
        fields = {"grant_type": GRANT, "subject_token": subject_token, "subject_token_type": ID_TOKEN}
        fields |= {"scope": PURPOSE, "audience": AUDIENCE}
        if self.client_auth == "none":
            fields["client_id"] = CLIENT_ID
        return urlencode(fields)

    def write_pool(self, tokens: list[str], name: str = "bodies.txt") -> Path:
        """One form body per line, for the wrk pool script."""
        path = self.workdir / name
        path.write_text("".join(self.form(t) + "\n" for t in tokens))
        return path

    def audit_counts(self, request_id: str) -> dict[str, int]:
        """Committed audit records of one phase (its X-Request-Id), per decision."""
        query = "SELECT decision, count(*) FROM audit_records WHERE request_id = {} GROUP BY decision"
        if self.store == "sqlite":
            with sqlite3.connect(self.workdir / "exchange.db") as conn:
                return dict(conn.execute(query.format("?"), (request_id,)).fetchall())
        rows = pg(self.store_url, query.format(f"'{request_id}'"))
        return {r[0]: r[1] for r in rows}

    def settled_audit(self, request_id: str) -> dict[str, int]:
        """Counts once what was in flight at wrk's cutoff is committed (stable for two reads)."""
        last: dict[str, int] | None = None
        for _ in range(30):
            time.sleep(0.3)
            now = self.audit_counts(request_id)
            if now == last:
                return now
            last = now
        return last or {}

    def audit_check(self, request_id: str, answered_200: int, connections: int) -> tuple[str, bool]:
        """One granted row per 200 of the phase. wrk stops at its deadline with requests in flight that
        the server still answers and audits: rows may exceed the 200s wrk counted by at most the
        connection count, never fall short; no denials."""
        rows = self.settled_audit(request_id)
        granted, denied = rows.get("granted", 0), rows.get("denied", 0)
        diff = granted - answered_200
        ok = 0 <= diff <= connections and denied == 0
        return (
            f"{granted} granted rows for {answered_200} 200s (+{diff} in flight at cutoff), {denied} denied",
            ok,
        )

    def pg_usage(self) -> PgUsage:
        """Start counting what PostgreSQL spends on this service (see PgUsage.since)."""
        ours = self.backend_pids()
        wal = pg(self.pg_admin_dsn, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0] if ours else 0
        cpu = {p: cpu_seconds([p]) for p in pids_named("postgres")}
        return PgUsage(self, ours, cpu, self.commits(), int(wal))

    def backend_pids(self) -> list[int]:
        """PostgreSQL backends serving this service's database (its pool's connections)."""
        if self.database is None:
            return []
        rows = pg(self.pg_admin_dsn, f"SELECT pid FROM pg_stat_activity WHERE datname = '{self.database}'")
        return [r[0] for r in rows]

    def commits(self) -> int:
        """Transactions committed in this service's database so far (pg_stat_database)."""
        if self.database is None:
            return 0
        rows = pg(
            self.pg_admin_dsn, f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{self.database}'"
        )
        return int(rows[0][0]) if rows else 0

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.database is not None:
            pg(self.pg_admin_dsn, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            self.database = None

    def __enter__(self) -> Exchange:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
