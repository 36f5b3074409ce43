"""Every start-up check that needs no network, run before a server starts and by `exchange config check`.

What `build_runtime` would trip over later, in a worker, with a traceback: the store URL, the key-
encryption key (present for PostgreSQL, decodable, not readable by others), every file the config
names (readable, parseable, writable where the service writes), and optional extras the config asks
for. Each problem is one sentence naming the key, the file or the environment variable.
`--connect` adds the checks that do need the network: the store answers, each `jwks_uri` serves keys.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from pathlib import Path

import msgspec

from exchange.errors import ConfigError
from exchange.keys import load_kek
from schemas.config import Settings

KEK_ENV = "EXCHANGE_KEK"
OTEL_MISSING = "tracing.enabled: OpenTelemetry is not installed; pip install 'purpose-exchange[otel]'"


def preflight(settings: Settings) -> list[str]:
    """Problems found without the network; [] when start-up can proceed."""
    problems: list[str] = []
    problems += _store(settings)
    problems += _kek(settings)
    for i, issuer in enumerate(settings.trusted_issuers):
        if issuer.jwks_file is not None:
            problems += _jwks_file(f"trusted_issuers[{i}] ({issuer.issuer}).jwks_file", issuer.jwks_file)
    for i, client in enumerate(settings.clients):
        if client.jwks_file is not None:
            problems += _jwks_file(f"clients[{i}] ({client.client_id}).jwks_file", client.jwks_file)
    if settings.dev_issuer is not None:
        problems += _writable_file("dev_issuer.key_file", Path(settings.dev_issuer.key_file))
    if settings.tracing.enabled:
        problems += _tracing()
    return problems


def _tracing() -> list[str]:
    try:
        importlib.import_module("opentelemetry.sdk.trace")
        importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    except ImportError:
        return [OTEL_MISSING]
    return []


def _sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///") :])
    return None


def _store(settings: Settings) -> list[str]:
    url = settings.store.url
    if url.startswith(("postgresql://", "postgres://")) or url == "sqlite:///:memory:":
        return []
    path = _sqlite_path(url)
    if path is None:
        scheme = url.split(":", 1)[0]
        return [f"store.url: unsupported scheme {scheme!r}; use sqlite:///PATH or postgresql://..."]
    return _writable_file("store.url", path)


def _writable_file(key: str, path: Path) -> list[str]:
    """The service creates or rewrites this file: it must be, or be creatable, and be writable."""
    if path.exists():
        if path.is_dir():
            return [f"{key}: {path} is a directory, not a file"]
        if not os.access(path, os.R_OK | os.W_OK):
            return [f"{key}: {path} is not readable and writable by this user"]
        return []
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the service creates missing folders: the first existing one decides
    if not os.access(folder, os.W_OK | os.X_OK):
        return [f"{key}: cannot create {path}: {folder} is not writable by this user"]
    return []


def _kek(settings: Settings) -> list[str]:
    """The KEK loads as start-up loads it (keys.load_kek: present, 32 bytes, a file private to its
    owner), except that a KEK file start-up would generate is only checked for being creatable."""
    sqlite = _sqlite_path(settings.store.url)
    url = settings.store.url
    if sqlite is None and not url.startswith(("postgresql://", "postgres://")):
        return []  # an unsupported store: said once, by _store
    generated = None if sqlite is None else sqlite.with_suffix(".kek")
    if not (os.environ.get(KEK_ENV) or settings.signing.kek_file) and generated and not generated.exists():
        return _writable_file("the generated KEK file (beside store.url; or set $EXCHANGE_KEK)", generated)
    try:
        load_kek(settings.signing, settings.store)
    except ConfigError as exc:
        return exc.problems
    return []


def _jwks_file(key: str, path: str) -> list[str]:
    from exchange.verify.jwks import StaticJWKS

    file = Path(path)
    if not os.access(file, os.R_OK):
        return [f"{key}: {file} is not readable by this user"]
    try:
        StaticJWKS.from_file(file)
    except ValueError as exc:
        return [f"{key}: {exc}"]
    return []


async def connect(settings: Settings, *, within: float = 10.0) -> list[str]:
    """The network checks of `config check --connect`: the store answers; each jwks_uri serves keys."""
    problems: list[str] = []
    problems += await _connect_store(settings)
    uris = [
        (f"trusted_issuers[{i}] ({t.issuer}).jwks_uri", t.jwks_uri)
        for i, t in enumerate(settings.trusted_issuers)
    ]
    uris += [(f"clients[{i}] ({c.client_id}).jwks_uri", c.jwks_uri) for i, c in enumerate(settings.clients)]
    checks = [_fetch_jwks(key, uri, within) for key, uri in uris if uri is not None]
    for found in await asyncio.gather(*checks):
        problems += found
    return problems


async def _connect_store(settings: Settings) -> list[str]:
    from exchange.store import make_store
    from exchange.store.base import StoreUnavailable

    if _sqlite_path(settings.store.url) is not None:
        return []  # an embedded file: nothing to reach (preflight checked it can be opened)
    # Check reachability only: no migration from a check (start-up migrates if configured).
    store = make_store(msgspec.structs.replace(settings.store, migrate_on_start=False))
    try:
        await store.open()
        await store.ping()
    except StoreUnavailable as exc:
        return [f"store.url: {exc}"]
    except Exception as exc:  # the schema is behind, or the server refused us: say which
        if settings.store.migrate_on_start and "migrat" in str(exc).lower():
            return []  # the server migrates at start
        return [f"store.url: {type(exc).__name__}: {exc}"]
    finally:
        await store.close()
    return []


async def _fetch_jwks(key: str, uri: str, within: float) -> list[str]:
    from exchange.verify.jwks import JWKSCache

    cache = JWKSCache(uri, timeout=within, cooldown=0)
    await cache.refresh()
    if cache.last_error is not None:
        return [f"{key}: {uri} could not be fetched ({cache.last_error})"]
    return []
