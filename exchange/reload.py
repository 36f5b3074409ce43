"""Live configuration: purposes, clients and trusted issuers reloaded without a restart, atomically.

`Configured` is the part of the runtime built from those sections (subject trust, client
authenticator, purpose policies, the RFC 8414 metadata). It is immutable and built whole, then put in
place with one assignment (`TokenExchange.configured`): a request reads it once when it starts, so it
finishes on the configuration it began with, and no request ever sees half of two.

A reload (SIGHUP; `exchange config reload` sends it) in each worker:
1. reads the file and runs every check start-up runs (types and cross-checks, policies, preflight),
   then builds every piece; JWKS caches of issuers and clients whose key source did not change are
   carried over (their keys, freshness and cooldown: no refetch storm, no outage if an identity
   provider is down at that moment), and so are the remembered client-secret checks (each is bound
   to the stored hash, so a changed secret is checked again);
2. on any problem keeps the configuration in use: `config_reload_failed` names every problem,
   `config_reloads_total{result="error"}` counts it;
3. otherwise swaps it in: `config_reloaded`, `{result="ok"}`. Sections that only a restart can apply
   (RESTART_ONLY) keep their running values; if they changed, `config_restart_required` says which.
The outcome goes to the run directory, where `exchange config reload` reads every worker's.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec
import structlog

from exchange.clients import ASSERTION_ALGORITHMS, ClientAuthenticator
from exchange.errors import ConfigError
from exchange.rundir import ReloadState, RunDir, alive
from exchange.store.base import Store
from exchange.trust import SubjectTrust, subject_trust
from exchange.txn import TransactionTokens
from exchange.verify.jwks import KeySource
from rules import PolicyError, PurposePolicy, compile_policies
from schemas.config import Settings
from schemas.wire import (
    GRANT_TOKEN_EXCHANGE,
    ISSUED_TOKEN_TYPES,
    SUBJECT_TOKEN_TYPES,
    TOKEN_TYPE_TXN_TOKEN,
    TXN_SUBJECT_TOKEN_TYPES,
    ServerMetadata,
)

log = structlog.get_logger("exchange.reload")

# What a reload never changes in a running server: it is built into the process (store pool, signing
# keys, listeners, log and trace pipelines, the audit tally and purge) or into every token and document
# it issues (issuer, limits).
RESTART_ONLY: Final = (
    "issuer",
    "store",
    "signing",
    "limits",
    "dev_issuer",
    "logging",
    "metrics",
    "tracing",
    "audit",
)
_encode = msgspec.json.Encoder().encode


def metadata(settings: Settings) -> ServerMetadata:
    """RFC 8414 authorization server metadata for these settings."""
    methods_used: set[str] = {c.auth_method for c in settings.clients} or {"none"}
    if methods_used & {"client_secret_basic", "client_secret_post"}:
        # A secret client may send its secret either way (exchange/clients.py).
        methods_used |= {"client_secret_basic", "client_secret_post"}
    methods = sorted(methods_used)
    return ServerMetadata(
        issuer=settings.issuer,
        token_endpoint=f"{settings.issuer}/token",
        jwks_uri=f"{settings.issuer}/.well-known/jwks.json",
        grant_types_supported=[GRANT_TOKEN_EXCHANGE],
        token_endpoint_auth_methods_supported=methods,
        token_endpoint_auth_signing_alg_values_supported=(
            list(ASSERTION_ALGORITHMS) if "private_key_jwt" in methods else None
        ),
        scopes_supported=sorted(settings.purposes),
        response_types_supported=[],
        authorization_details_types_supported=sorted(
            {t for p in settings.purposes.values() for t in p.authorization_details}
        )
        or None,
        # The token types a request may name here; with [txn_tokens], the Txn-Token and the subject
        # types its profile adds (draft-ietf-oauth-transaction-tokens-10 §11.1, §11.2).
        requested_token_types_supported=sorted(
            ISSUED_TOKEN_TYPES | ({TOKEN_TYPE_TXN_TOKEN} if settings.txn_tokens else set())
        ),
        subject_token_types_supported=sorted(
            TXN_SUBJECT_TOKEN_TYPES if settings.txn_tokens else SUBJECT_TOKEN_TYPES
        ),
    )


@dataclass(frozen=True, slots=True)
class Configured:
    """Everything built from purposes, clients and trusted issuers; replaced whole on reload."""

    settings: Settings
    trust: SubjectTrust
    clients: ClientAuthenticator
    policies: dict[str, PurposePolicy]
    metadata: bytes
    digest: str  # SHA-256 of the file it was built from ("" when built from settings alone)
    # With [txn_tokens]: the Transaction Token Service's decisions (exchange/txn.py).
    txn: TransactionTokens | None = None
    # The exchange's own published keys (keys.PublishedKeys), carried from build to build: what a
    # Txn-Token presented for replacement is checked with.
    own_keys: KeySource | None = None

    def key_sources(self) -> list[tuple[str, KeySource]]:
        """Every key source, named as metrics label it: trusted issuers by issuer, clients as client:ID."""
        named = list(self.trust.sources().items())
        named += [(f"client:{cid}", source) for cid, source in self.clients.key_sources().items()]
        return named


def build(
    settings: Settings,
    store: Store,
    *,
    digest: str = "",
    previous: Configured | None = None,
    own_keys: KeySource | None = None,
) -> Configured:
    """Build the configured part of the runtime; raises ConfigError / PolicyError / ValueError."""
    policies = compile_policies(settings)
    trust = subject_trust(settings, previous=None if previous is None else previous.trust)
    clients = ClientAuthenticator(
        settings.clients,
        token_endpoint=f"{settings.issuer}/token",
        issuer=settings.issuer,
        store=store,
        max_token_bytes=settings.limits.max_token_bytes,
        max_assertion_lifetime=settings.limits.max_assertion_lifetime,
        previous=None if previous is None else previous.clients,
    )
    own_keys = own_keys if own_keys is not None else None if previous is None else previous.own_keys
    txn = None
    if settings.txn_tokens is not None:
        if own_keys is None:
            raise ValueError("[txn_tokens] needs the exchange's own published keys (own_keys)")
        registered = {
            w.client_id: clients.registered_keys(w.client_id) for w in settings.txn_tokens.workloads
        }
        txn = TransactionTokens(
            settings.txn_tokens,
            issuer=settings.issuer,
            token_endpoint=f"{settings.issuer}/token",
            trust=trust,
            own_keys=own_keys,
            workload_keys={name: keys for name, keys in registered.items() if keys is not None},
            max_token_bytes=settings.limits.max_token_bytes,
        )
    return Configured(
        settings=settings,
        trust=trust,
        clients=clients,
        policies=policies,
        metadata=_encode(metadata(settings)),
        digest=digest,
        txn=txn,
        own_keys=own_keys,
    )


def restart_needed(running: Settings, new: Settings) -> list[str]:
    """The RESTART_ONLY sections that differ between the running settings and the new ones."""
    return [name for name in RESTART_ONLY if getattr(running, name) != getattr(new, name)]


def file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


class Reloader:
    """Reloads one worker's configuration from `path` on SIGHUP; `current()` / `install()` are the
    runtime's. Reloads never overlap: a SIGHUP during a reload is taken after it."""

    def __init__(
        self,
        path: Path,
        store: Store,
        current: Callable[[], Configured],
        install: Callable[[Configured], None],
        *,
        on_result: Callable[[bool], None] = lambda ok: None,
    ) -> None:
        self._path = path
        self._store = store
        self._current = current
        self._install = install
        self._on_result = on_result
        self._lock = asyncio.Lock()
        self.state = ReloadState(digest=current().digest, loaded_at=time.time())

    def listen(self) -> None:
        """Reload on SIGHUP (this process must be the one the event loop's signals reach)."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload(), name="config-reload"))

    def stop_listening(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    async def reload(self) -> bool:
        """Validate and build the whole file, then swap it in; keep the old on any problem."""
        from exchange.config import load_settings
        from exchange.preflight import preflight

        async with self._lock:
            running = self._current()
            self.state.last_attempt = time.time()
            try:
                settings = load_settings(self._path)
                problems = preflight(settings)
                if problems:
                    raise ConfigError(problems)
                # Sections a reload cannot apply keep their running values (and are named below).
                applied = msgspec.structs.replace(
                    settings, **{name: getattr(running.settings, name) for name in RESTART_ONLY}
                )
                new = build(applied, self._store, digest=file_digest(self._path), previous=running)
            except (ConfigError, PolicyError, ValueError, OSError) as exc:
                problems = getattr(exc, "problems", None) or [f"{type(exc).__name__}: {exc}"]
                self.state.last_result = problems[0]
                log.error("config_reload_failed", file=str(self._path), problems=problems, pid=os.getpid())
                self._on_result(False)
                return False
            self._install(new)
            later = restart_needed(running.settings, settings)
            self.state = msgspec.structs.replace(
                self.state,
                generation=self.state.generation + 1,
                digest=new.digest,
                loaded_at=time.time(),
                last_result="ok",
                restart_needed=later,
            )
            log.info(
                "config_reloaded",
                file=str(self._path),
                generation=self.state.generation,
                purposes=len(settings.purposes),
                clients=len(settings.clients),
                trusted_issuers=len(settings.trusted_issuers),
                pid=os.getpid(),
            )
            if later:
                log.warning(
                    "config_restart_required", sections=later, hint="restart the server to apply them"
                )
            self._on_result(True)
            return True


def forward_reload(run_dir: RunDir) -> list[int]:
    """In the server's main process, on SIGHUP: tell each of its live workers (the run directory
    knows them) to reload. A worker still starting reads the new file anyway."""
    parent = os.getpid()
    signalled = []
    for state in run_dir.states():
        if state.pid != parent and alive(state.pid) and _parent_of(state.pid) in (parent, None):
            os.kill(state.pid, signal.SIGHUP)
            signalled.append(state.pid)
    log.info("config_reload_requested", workers=signalled)
    return signalled


def _parent_of(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[1])
    except (OSError, IndexError, ValueError):
        return None  # not Linux: trust the run directory
