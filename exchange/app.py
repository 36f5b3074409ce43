"""The HTTP face: `create_app(settings)` wires the pieces built once at start-up to six routes (and,
with `[dev_issuer]` only, the dev identity provider's sign-in pages, exchange/devlogin.py).

POST /token                              RFC 8693 exchange (exchange/service.py does the work)
GET  /.well-known/jwks.json              public signing keys (RFC 7517), cacheable
GET  /.well-known/oauth-authorization-server   RFC 8414 metadata
GET  /healthz                            the process is up
GET  /readyz                             ready, degraded or unavailable, naming each check (health.py)
GET  /metrics                            Prometheus metrics (telemetry.py), unless on a management port
GET  /openapi.json                       the OpenAPI document of these routes (exchange/openapi.py)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import structlog
from litestar import Litestar, Request, Response, asgi, get
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from exchange import devlogin, health, openapi, reload
from exchange.audit import Auditor, DenialTally
from exchange.config import is_loopback_host
from exchange.endpoint import Front, TokenEndpoint, bind_request_id, error_body, error_headers
from exchange.errors import (
    UNAVAILABLE_RETRY_AFTER,
    ConfigError,
    InvalidRequest,
    OAuthError,
    ServerError,
)
from exchange.keys import KeyRing, PublishedKeys, load_kek
from exchange.lifecycle import Timing
from exchange.logging import DEBUG_ENV, configure_from
from exchange.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from exchange.metrics import Snapshot, merge, render
from exchange.reload import Configured, Reloader
from exchange.rundir import RUN_DIR_ENV, ReloadState, RunDir, WorkerState, alive
from exchange.service import TokenExchange
from exchange.store import make_store
from exchange.store.base import Store, StoreUnavailable
from exchange.telemetry import ServiceMetrics
from exchange.tokens import Minter
from exchange.tracing import Tracing
from exchange.verify.jwks import JWKSCache
from rules import PolicyError, compile_policies
from schemas.config import Settings
from schemas.wire import ErrorResponse

log = structlog.get_logger("exchange.app")
_encode = msgspec.json.Encoder().encode
PURGE_SECONDS = 60.0
# The collector's youngest generation runs every this many net allocations (CPython's default: 700).
GC_YOUNG_THRESHOLD = 10_000
# Retention deletes at most PURGE_BATCHES * PURGE_BATCH audit records per sweep, PURGE_BATCH at a time.
PURGE_BATCH = 10_000
PURGE_BATCHES = 100
SNAPSHOT_SECONDS = 1.0
KEY_REFRESH_SECONDS = 5.0
# Probes and scrapes come every few seconds: their lines are debug unless they fail.
_FORWARDED_BY_A_PROXY = ("forwarded", "x-forwarded-for", "x-real-ip")
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass
class Runtime:
    """Everything built at start-up; handlers only read it."""

    store: Store
    keyring: KeyRing
    exchange: TokenExchange
    auditor: Auditor
    tally: DenialTally
    keys_version: int
    metrics: ServiceMetrics | None = None
    tracing: Tracing | None = None
    reloader: Reloader | None = None

    @property
    def configured(self) -> Configured:
        """Trust, clients, policies and metadata in use now (a reload replaces them whole)."""
        return self.exchange.configured

    def install(self, configured: Configured) -> None:
        """Put a reloaded configuration in place: one assignment, so each request sees one or the other."""
        self.exchange.configured = configured
        # Reloaded ttls change how long a key that stopped signing must stay published.
        self.keyring.timing = self.keyring.timing.with_ttls_of(configured.settings)
        if self.metrics is not None:
            self.metrics.known(
                purposes=configured.settings.purposes,
                clients=(c.client_id for c in configured.settings.clients),
            )
            self.metrics.config_loaded.set((), time.time())


async def build_runtime(
    settings: Settings, *, clock: Callable[[], float] = time.time, digest: str = ""
) -> Runtime:
    """Open the store, load keys, and build trust, clients, policies and the exchange once."""
    compile_policies(settings)  # config problems stop start-up before any I/O
    kek = load_kek(settings.signing, settings.store)
    metrics = (
        ServiceMetrics(purposes=settings.purposes, clients=(c.client_id for c in settings.clients))
        if settings.metrics.enabled
        else None
    )
    store = make_store(settings.store)
    await store.open()
    try:
        keyring = KeyRing(store, kek, settings.signing.algorithm, timing=Timing.of(settings))
        # Read before loading the keys, so a rotation racing with start-up is still noticed.
        keys_version = await store.keys_version()
        await keyring.ensure_active()
        configured = reload.build(settings, store, digest=digest, own_keys=PublishedKeys(keyring))
        if settings.dev_issuer is not None:
            log.warning(
                "dev_issuer_trusted",
                issuer=settings.dev_issuer.issuer,
                warning="DEVELOPMENT ONLY: identity tokens from a local key are accepted",
            )
        auditor = Auditor(store, metrics=metrics)
        tally = DenialTally(
            store,
            window=settings.audit.tally_window,
            max_keys=settings.audit.tally_keys,
            clock=clock,
        )
        exchange = TokenExchange(
            configured=configured,
            minter=Minter(keyring, settings.issuer),
            auditor=auditor,
            tally=tally,
            store=store,
            clock=clock,
            metrics=metrics,
        )
        if metrics is not None:
            metrics.watch_audit_queue(lambda: auditor.queue_depth)
            metrics.watch_signing_keys(lambda: keyring.published, time.time)
            metrics.info.set((_version(),), 1.0)
            metrics.config_loaded.set((), time.time())
            metrics.watch_key_sources(lambda: exchange.configured.key_sources())
    except BaseException:
        await store.close()
        raise
    return Runtime(
        store=store,
        keyring=keyring,
        exchange=exchange,
        auditor=auditor,
        tally=tally,
        keys_version=keys_version,
        metrics=metrics,
        tracing=Tracing(settings.tracing) if settings.tracing.enabled else None,
    )


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Every HTTP request to a litestar route gets its id here, once: bound to the log context (every
    log line of the request carries it), kept in the request state for handlers, and echoed as
    `X-Request-ID` (the front's /token does the same itself, exchange/endpoint.py)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        rid = bind_request_id(scope["headers"])
        scope.setdefault("state", {})["request_id"] = rid
        echo = (b"x-request-id", rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        await app(scope, receive, send_with_id)

    return middleware


def error_response(exc: OAuthError) -> Response[bytes]:
    """The same RFC 6749 §5.2 answer as /token's, for litestar routes and handlers."""
    return Response(
        error_body(exc), status_code=exc.status, media_type="application/json", headers=error_headers(exc)
    )


def create_app(
    settings: Settings, *, clock: Callable[[], float] = time.time, config_file: Path | None = None
) -> Front:
    """The ASGI app for these settings. Nothing is opened until the lifespan starts. With `config_file`
    (what `exchange serve` runs), SIGHUP reloads purposes, clients and trusted issuers from it."""

    run_dir = RunDir(os.environ[RUN_DIR_ENV]) if os.environ.get(RUN_DIR_ENV) else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        configure_from(settings.logging)
        try:
            digest = reload.file_digest(config_file) if config_file else ""
            runtime = await build_runtime(settings, clock=clock, digest=digest)
        except (ConfigError, PolicyError, StoreUnavailable, OSError, ValueError) as exc:
            problems = getattr(exc, "problems", None) or [str(exc) or type(exc).__name__]
            for problem in problems:
                log.error("startup_failed", error=problem)
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            # The sentence is said; the server's tracebacks of a failed lifespan would add nothing
            # but noise. Leave now: the server sees its worker gone and exits 1.
            sys.stderr.flush()
            os._exit(1)
        await runtime.auditor.start()
        await runtime.tally.start()
        background = [
            asyncio.create_task(
                runtime.store.watch_keys(runtime.keyring.refresh, known_version=runtime.keys_version),
                name="key-watch",
            ),
            asyncio.create_task(_purge(runtime, settings.audit.retention_seconds), name="purge"),
            asyncio.create_task(_refresh_keys(runtime), name="jwks-refresh"),
            asyncio.create_task(runtime.keyring.maintain(), name="key-lifecycle"),
        ]
        if run_dir is not None:
            background.append(asyncio.create_task(_snapshots(runtime, run_dir), name="snapshots"))
        if config_file is not None:
            runtime.reloader = _reloader(runtime, config_file, run_dir)
        app.state.runtime = endpoint.runtime = runtime
        _settle_gc()
        log.info(
            "service_started",
            issuer=settings.issuer,
            kid=runtime.keyring.active.kid,
            store=settings.store.url.split(":", 1)[0],
            pid=os.getpid(),
        )
        try:
            yield
        finally:
            if runtime.reloader is not None:
                runtime.reloader.stop_listening()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await runtime.tally.stop()
            await runtime.auditor.stop()
            await runtime.store.close()
            if runtime.tracing is not None:
                runtime.tracing.shutdown()

    jwks_headers = {"Cache-Control": f"public, max-age={settings.signing.jwks_max_age}"}
    openapi_document = _encode(openapi.document(settings))

    # POST /token is answered by the endpoint before litestar (Front); the route here takes the other
    # spellings of the path litestar routes to it. Everything else stays idiomatic litestar.
    endpoint = TokenEndpoint(
        max_body_bytes=settings.limits.max_body_bytes, body_timeout=settings.limits.body_timeout, clock=clock
    )

    @asgi("/token", copy_scope=False)
    async def token(scope: Scope, receive: Receive, send: Send) -> None:
        await endpoint.handle(scope, receive, send, scope["state"]["request_id"])  # set by the middleware

    @get("/.well-known/jwks.json", middleware=[_request_line])
    async def jwks(request: Request[Any, Any, Any]) -> Response[bytes]:
        runtime: Runtime = request.app.state.runtime
        return Response(
            runtime.keyring.jwks_bytes, media_type="application/jwk-set+json", headers=jwks_headers
        )

    @get("/.well-known/oauth-authorization-server", middleware=[_request_line])
    async def server_metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
        runtime: Runtime = request.app.state.runtime
        return Response(runtime.configured.metadata, media_type="application/json", headers=jwks_headers)

    @get("/healthz", middleware=[_request_line])
    async def healthz() -> Response[bytes]:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @get("/readyz", middleware=[_request_line])
    async def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
        runtime: Runtime = request.app.state.runtime
        store = await health.store_check(runtime.store.ping, settings.store.command_timeout)
        if store.status != "ok":
            _store_error(runtime, "ping")
        issuers = health.issuer_checks(runtime.configured.trust.sources())
        readiness = health.verdict([store, _signing_key_check(runtime.keyring)], issuers)
        # Unavailable is temporary (an outage): say when to ask again, like /token's 503 does.
        retry = (
            {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)} if health.http_status(readiness) == 503 else None
        )
        return Response(
            health.body(readiness),
            status_code=health.http_status(readiness),
            media_type="application/json",
            headers=retry,
        )

    @get("/metrics", middleware=[_request_line])
    async def metrics_route(request: Request[Any, Any, Any]) -> Response[bytes]:
        runtime: Runtime = request.app.state.runtime
        assert runtime.metrics is not None, "the route exists only when metrics are enabled"
        # On the service port, for this machine only: the series name every configured client and
        # purpose (the roster that answering unknown client ids like known ones keeps from strangers)
        # and their volumes. Another host scrapes the management port (`[metrics] listen`).
        # A proxy on this machine is a loopback peer too: a request it forwarded (it says so in a
        # forwarding header) came from elsewhere.
        if (
            request.client is None
            or not is_loopback_host(request.client.host)
            or any(name in request.headers for name in _FORWARDED_BY_A_PROXY)
        ):
            raise NotFoundException()
        return Response(scrape(runtime.metrics, run_dir), media_type=METRICS_CONTENT_TYPE)

    def on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
        if isinstance(exc, NotFoundException | MethodNotAllowedException):  # no route: no line yet
            log.info("http_request", method=request.method, path=request.url.path, status=exc.status_code)
        if exc.status_code == 413:
            return error_response(InvalidRequest("request body too large"))
        status = exc.status_code if 400 <= exc.status_code < 600 else 500
        name = "invalid_request" if status < 500 else "server_error"
        return Response(
            _encode(ErrorResponse(error=name, error_description=str(exc.detail))),
            status_code=status,
            media_type="application/json",
            headers=exc.headers or None,
        )

    def on_crash(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        log.error("unhandled_error", error=exc.__class__.__name__)
        return error_response(ServerError("internal error"))

    @get("/openapi.json")
    async def openapi_json() -> Response[bytes]:
        return Response(openapi_document, media_type="application/json", headers=jwks_headers)

    routes: list[Any] = [token, jwks, server_metadata, healthz, readyz, openapi_json]
    if settings.metrics.enabled and settings.metrics.listen is None:
        routes.append(metrics_route)
    if settings.dev_issuer is not None:
        # The dev identity provider's sign-in pages: only with [dev_issuer], like its trust.
        routes.append(devlogin.routes(settings.dev_issuer, store_of=lambda app: app.state.runtime.store))
    return Front(
        Litestar(
            route_handlers=routes,
            lifespan=[lifespan],
            exception_handlers={HTTPException: on_http_error, Exception: on_crash},
            middleware=[request_id_middleware],
            request_max_body_size=settings.limits.max_body_bytes,
            openapi_config=None,
            debug=False,
        ),
        endpoint,
    )


def _settle_gc() -> None:
    """Once start-up has built everything: what exists now (framework, keys, policies, pools) lives as
    long as the process, so it leaves the cyclic collector's sight (`gc.freeze`), and the youngest
    generation is collected less often. A request's objects die by reference counting; the default
    threshold made 64 requests in flight trigger a collection every few dozen requests, each one
    traversing everything start-up made (~15% of an exchange's CPU, `bench/exchange_bench.py --micro`).
    A reload's replaced configuration is freed by reference counting as before; only cycles inside
    what start-up built are never collected."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def _purge(runtime: Runtime, retention: float | None) -> None:
    """At start and then now and then: sweep expired replay records and rate counters, audit records
    and denial counts older than the retention (`[audit] retention`; None keeps them). (Signing keys
    follow their own lifecycle: `KeyRing.maintain`.)"""
    store = runtime.store
    while True:
        try:
            now = time.time()
            await store.purge_expired(now)
            if retention is not None:
                purged = 0
                # Batches of short transactions; a backlog larger than this waits for the next sweep.
                for _ in range(PURGE_BATCHES):
                    deleted = await store.purge_audit(now - retention, batch=PURGE_BATCH)
                    purged += deleted
                    if deleted < PURGE_BATCH:
                        break
                if purged:
                    log.info("audit_purged", rows=purged, older_than_days=round(retention / 86400))
        except Exception as exc:  # the store may be down for a while; the next sweep catches up
            log.warning("purge_failed", error=exc.__class__.__name__)
            _store_error(runtime, "purge")
        await asyncio.sleep(PURGE_SECONDS)


def _store_error(runtime: Runtime, operation: str) -> None:
    if runtime.metrics is not None:
        runtime.metrics.store_errors.inc((operation,))


def _signing_key_check(keyring: KeyRing) -> health.Check:
    problem = keyring.problem
    if problem is not None:
        return health.Check(name="signing_key", status="down", detail=f"cannot sign: {problem}")
    return health.Check(name="signing_key", status="ok", detail=f"kid {keyring.active.kid}")


def scrape(metrics: ServiceMetrics, run_dir: RunDir | None) -> bytes:
    """This worker's metrics, merged with the other workers' last snapshots when there are several."""
    pid = os.getpid()
    mine = metrics.registry.snapshot(pid)
    others = [s.metrics for s in run_dir.states(exclude=pid)] if run_dir is not None else []
    return render(merge([mine, *others], alive=lambda p: p == pid or alive(p)))


async def _snapshots(runtime: Runtime, run_dir: RunDir) -> None:
    """Every second, tell the other workers, the management listener and `exchange config reload`
    what this worker has counted and which configuration it runs."""
    while True:
        _write_state(runtime, run_dir)
        await asyncio.sleep(SNAPSHOT_SECONDS)


def _write_state(runtime: Runtime, run_dir: RunDir) -> None:
    pid = os.getpid()
    metrics = runtime.metrics.registry.snapshot(pid) if runtime.metrics is not None else Snapshot(pid, [])
    state = runtime.reloader.state if runtime.reloader is not None else ReloadState()
    try:
        run_dir.write(WorkerState(pid=pid, metrics=metrics, config=state))
    except OSError as exc:  # a full or vanished run dir must not stop the worker
        log.warning("worker_state_not_written", error=f"{type(exc).__name__}: {exc}")


def _reloader(runtime: Runtime, config_file: Path, run_dir: RunDir | None) -> Reloader:
    def result(ok: bool) -> None:
        if runtime.metrics is not None:
            runtime.metrics.reloads.inc(("ok" if ok else "error",))
        if run_dir is not None:
            _write_state(runtime, run_dir)  # at once: `exchange config reload` is waiting for it

    reloader = Reloader(
        config_file, runtime.store, lambda: runtime.configured, runtime.install, on_result=result
    )
    try:
        reloader.listen()
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread (an in-process test)
        log.debug("sighup_not_available")
    return reloader


async def _refresh_keys(runtime: Runtime) -> None:
    """Fetch every JWKS once at start, then again before it goes stale (not only when a token needs it),
    so an identity provider that stops answering shows in /readyz and the metrics within its max-age."""
    while True:
        due = [s for _, s in runtime.configured.key_sources() if isinstance(s, JWKSCache) and s.refresh_due()]
        if due:
            await asyncio.gather(*(s.refresh() for s in due), return_exceptions=True)
        await asyncio.sleep(KEY_REFRESH_SECONDS)


def _request_line(app: ASGIApp) -> ASGIApp:
    """Route middleware: one canonical `http_request` line per request to a litestar route (/token
    writes its own, richer line from the exchange)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        status = 500
        started = time.perf_counter()

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_and_see)
        finally:
            path = scope["path"]
            level = logging.DEBUG if path in _PROBES and status < 400 else logging.INFO
            if status >= 500:
                level = logging.WARNING
            log.log(
                level,
                "http_request",
                method=scope.get("method"),
                path=path,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )

    return middleware


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("purpose-exchange")
    except PackageNotFoundError:
        return "unknown"


def app_from_env() -> Front:
    """Factory for ASGI servers: reads the config named by $EXCHANGE_CONFIG."""
    from exchange.config import config_path, load_settings

    path = config_path(None)
    return create_app(load_settings(path), config_file=path)
