"""What the ambassador and the gateway share: their verifier settings, how the verifier, route table
and replay guard are built from them, and how either is served (granian or uvicorn, N workers).

The settings travel to worker processes as JSON in an environment variable (no pickling), and every
worker rebuilds the same app from them.
"""

from __future__ import annotations

import os
import sys
import tempfile

import msgspec

from exchange.verify.jwks import KeySource, key_source
from exchange.verify.replay import FileReplayGuard, InMemoryReplayGuard, PostgresReplayGuard, ReplayGuard
from exchange.verify.routes import RouteTable
from exchange.verify.txn import TxnTokenVerifier
from exchange.verify.verifier import PurposeTokenVerifier


class PlacementConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Whose tokens, which keys, which routes, and where single-use jtis are remembered."""

    issuer: str
    # The protected service's audience for purpose tokens; None: purpose tokens are not checked.
    audience: str | None = None
    jwks_uri: str | None = None
    jwks_file: str | None = None
    routes_file: str | None = None
    # Used when there is no routes file: every request needs a token of this purpose (None: any).
    purpose: str | None = None
    # Plain http to a non-loopback JWKS host: a private network only (see JWKSCache).
    allow_insecure_http: bool = False
    # Where single-use jtis are remembered across workers and replicas: PostgreSQL, or a file (one host).
    replay_dsn: str | None = None
    replay_file: str | None = None
    # Set: every request also needs a Txn-Token of this trust domain (draft-ietf-oauth-transaction-
    # tokens-10 §12), per txn_routes_file (a route's purpose is the Txn-Token's scope), else of
    # txn_scope, else of any scope.
    txn_trust_domain: str | None = None
    txn_routes_file: str | None = None
    txn_scope: str | None = None
    # Slow clients (granian): seconds a connection has to send its request head; also how long an idle
    # keep-alive connection stays open. Without it, a connection that sends nothing is held forever.
    header_timeout: float = 10.0


def replay_guard(dsn: str | None, file: str | None) -> ReplayGuard:
    """PostgreSQL (replicas), a file (the workers of one host), or memory (one process)."""
    if dsn and file:
        raise ValueError("use a replay database or a replay file, not both")
    if dsn:
        return PostgresReplayGuard(dsn)
    if file:
        return FileReplayGuard(file)
    return InMemoryReplayGuard()


def build_verifier(config: PlacementConfig) -> tuple[PurposeTokenVerifier | None, RouteTable]:
    """The purpose-token verifier (None without an audience) and route table for `config`, built once
    per worker."""
    if config.audience is None and config.txn_trust_domain is None:
        raise ValueError("a placement needs an audience (purpose tokens), a Txn-Token trust domain or both")
    routes = (
        RouteTable.from_file(config.routes_file) if config.routes_file else RouteTable.single(config.purpose)
    )
    if config.audience is None:
        return None, routes
    verifier = PurposeTokenVerifier(
        issuer=config.issuer, audience=config.audience, jwks=_keys(config),
        replay_guard=replay_guard(config.replay_dsn, config.replay_file),
    )  # fmt: skip
    return verifier, routes


def build_txn_verifier(config: PlacementConfig) -> tuple[TxnTokenVerifier | None, RouteTable]:
    """The Txn-Token verifier (None without a trust domain) and its route table, built once per worker."""
    if config.txn_routes_file and config.txn_scope:
        raise ValueError("use a Txn-Token route table or a Txn-Token scope, not both")
    routes = (
        RouteTable.from_file(config.txn_routes_file)
        if config.txn_routes_file
        else RouteTable.single(config.txn_scope)
    )
    if config.txn_trust_domain is None:
        return None, routes
    return TxnTokenVerifier(
        trust_domain=config.txn_trust_domain, issuer=config.issuer, jwks=_keys(config)
    ), routes


def _keys(config: PlacementConfig) -> KeySource:
    return key_source(
        jwks_file=config.jwks_file,
        jwks_uri=config.jwks_uri,
        issuer=config.issuer,
        allow_insecure_http=config.allow_insecure_http,
    )


def serve(
    factory: str, env: str, config: PlacementConfig, *, listen: str, server: str = "granian", workers: int = 1
) -> None:
    """Serve `factory` (module:function reading its config from $`env`) on `listen` ("host:port")."""
    from exchange.listen import ensure_free, split_host_port

    host, port = split_host_port(listen, what="--listen")
    ensure_free(host, port, what="--listen")  # PortInUse: granian would share it silently
    if workers > 1 and not (config.replay_dsn or config.replay_file):
        # Workers must share one record of single-use jtis, or each would accept the token once.
        run_dir = tempfile.mkdtemp(prefix="exchange-replays-")
        config = msgspec.structs.replace(config, replay_file=os.path.join(run_dir, "replays.sqlite3"))
    # Worker processes rebuild the app from the environment: no pickling, same path for both servers.
    os.environ[env] = msgspec.json.encode(config).decode()
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(
            factory, factory=True, host=host, port=port, workers=workers,
            log_level="warning", access_log=False, lifespan="on",
        )  # fmt: skip
        return
    from granian import Granian
    from granian.constants import Interfaces

    from exchange.connections import raise_file_limit, server_options
    from exchange.logging import granian_log_config
    from schemas.config import Limits

    # The service's slow-client bounds (exchange/connections.py): HTTP/1.1 only (granian's auto mode
    # waits for an HTTP/2 preface with no timeout), the request head within header_timeout, a bounded
    # read buffer (a proxy's heads are larger: cookies beside two tokens), connections per worker.
    limits = Limits(header_timeout=config.header_timeout, max_header_bytes=_MAX_HEADER_BYTES)
    max_connections, warning = raise_file_limit(limits, workers)
    if warning is not None:
        print(f"warning: {warning}", file=sys.stderr)
    Granian(
        factory, factory=True, interface=Interfaces.ASGI, address=host,
        port=port, workers=workers, log_access=False, log_dictconfig=granian_log_config(),
        **server_options(limits, max_connections),
    ).serve()  # fmt: skip


_MAX_HEADER_BYTES = 64 * 1024
