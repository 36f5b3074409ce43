"""pytest plugin: a real PostgreSQL for the tests, and a fresh database per test.

`pg_server_dsn` (session) finds a server, first that works of:
  1. testcontainers (a throwaway `postgres` container) where a Docker daemon answers;
  2. `$PURPOSE_EXCHANGE_TEST_DSN` (an admin DSN: it must be allowed to CREATE DATABASE);
  3. the local server at postgresql://postgres@127.0.0.1:5432/test, if it answers;
  4. a throwaway cluster made with local `initdb` / `pg_ctl` binaries, removed afterwards.
Otherwise PostgreSQL tests skip, saying why, except under CI (`$CI` set), where they fail: there the
PostgreSQL tests are mandatory.

`pg_url` (function) creates a uniquely named database on that server and drops it after the test, so
tests never see each other's rows and can run in any order.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

ENV_DSN = "PURPOSE_EXCHANGE_TEST_DSN"
LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _run_async(fn: Callable[[], object]) -> object:
    """Run a coroutine function to completion on a private loop in a worker thread.

    Session fixtures are sync and must not touch the event loop pytest-asyncio manages for tests.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(fn())).result()  # type: ignore[arg-type]


def _answers(dsn: str, timeout: float = 3.0) -> str | None:
    """None when `dsn` accepts a connection and a query, else why not."""

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=timeout)
        try:
            await conn.fetchval("SELECT 1", timeout=timeout)
        finally:
            await conn.close()

    try:
        _run_async(probe)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return None


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@contextlib.contextmanager
def _testcontainer() -> Iterator[str | None]:
    """A DSN of a throwaway container, or None when Docker is not usable here."""
    if not _docker_socket_answers():
        yield None
        return
    try:
        with warnings.catch_warnings():
            # testcontainers and the docker SDK import deprecated stdlib/third-party bits; that is
            # their business, and our warnings-are-errors setting must not turn it into a failure.
            warnings.simplefilter("ignore")
            import docker
            from testcontainers.postgres import PostgresContainer

            client = docker.from_env(timeout=3)
            try:
                client.ping()
            finally:
                client.close()
                # The SDK leaks a socket when the daemon does not answer; collect it here, where its
                # ResourceWarning is ignored, rather than let it fail some later test.
                gc.collect()
    except Exception:  # no SDK, no socket, no daemon: all mean "no Docker here"
        yield None
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        container = PostgresContainer("postgres:16-alpine", driver=None)
        container.start()
    try:
        yield container.get_connection_url()
    finally:
        container.stop()


def _docker_socket_answers() -> bool:
    """Cheap pre-check: a Docker daemon is configured (DOCKER_HOST) or listening on the usual socket."""
    if os.environ.get("DOCKER_HOST"):
        return True
    path = "/var/run/docker.sock"
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _pg_binaries() -> tuple[str, str] | None:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return str(bindir / "initdb"), str(bindir / "pg_ctl")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _throwaway_cluster() -> Iterator[str | None]:
    """initdb + pg_ctl into a temp folder; None when the binaries are missing."""
    binaries = _pg_binaries()
    if binaries is None:
        yield None
        return
    initdb, pg_ctl = binaries
    root = Path(tempfile.mkdtemp(prefix="px-pg-"))
    data = root / "data"
    # PostgreSQL refuses to run as root; as root, run it as the `postgres` system user.
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            yield None
            return
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        [
            *prefix,
            pg_ctl,
            "-D",
            str(data),
            "-w",
            "-t",
            "60",
            "-l",
            str(root / "log"),
            "start",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
        ],
        check=True,
        capture_output=True,
        timeout=90,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60
        )
        shutil.rmtree(root, ignore_errors=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is mandatory under CI and none could be reached: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL: {reason}")


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    """An admin DSN of a PostgreSQL server for this test session (see module docstring)."""
    tried: list[str] = []
    with contextlib.ExitStack() as stack:
        dsn = stack.enter_context(_testcontainer())
        if dsn is not None:
            yield dsn
            return
        tried.append("no Docker daemon for testcontainers")

        env = os.environ.get(ENV_DSN)
        if env:
            problem = _answers(env)
            if problem is not None:
                # Set explicitly, so a dead server is an error, never a silent skip.
                pytest.fail(f"${ENV_DSN} does not answer: {problem}", pytrace=False)
            yield env
            return
        tried.append(f"${ENV_DSN} unset")

        problem = _answers(LOCAL_DSN)
        if problem is None:
            yield LOCAL_DSN
            return
        tried.append(f"{LOCAL_DSN}: {problem}")

        try:
            dsn = stack.enter_context(_throwaway_cluster())
        except (OSError, subprocess.SubprocessError) as exc:
            tried.append(f"local initdb/pg_ctl failed: {exc}")
            dsn = None
        else:
            if dsn is None:
                tried.append("no initdb/pg_ctl binaries")
        if dsn is not None:
            yield dsn
            return
        _unavailable("; ".join(tried))


@pytest.fixture
async def pg_url(pg_server_dsn: str) -> AsyncIterator[str]:
    """The URL of a brand-new, empty database, dropped after the test."""
    name = f"px_test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_server_dsn, timeout=10)
    try:
        # Identifiers cannot be $n parameters; this one is generated here, never from input.
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(pg_server_dsn, name)
    finally:
        admin = await asyncpg.connect(pg_server_dsn, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
