"""Loading the TOML configuration: decode strictly, resolve paths and env secrets, cross-check.

Relative file paths (store, KEK, JWKS files, dev key) are resolved against the config file's folder,
so a config means the same thing whatever directory the service is started from.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from exchange import lifecycle
from exchange.errors import ConfigError
from exchange.listen import split_host_port
from schemas.claims import WORKLOAD_SEPARATOR
from schemas.config import Client, Purpose, Settings, TrustedIssuer, TxnTokens

DEFAULT_CONFIG = "exchange.toml"


def config_path(explicit: str | None) -> Path:
    """`--config`, else $EXCHANGE_CONFIG, else ./exchange.toml."""
    return Path(explicit or os.environ.get("EXCHANGE_CONFIG") or DEFAULT_CONFIG)


def load_settings(path: str | Path) -> Settings:
    """Read, validate and resolve a config file; raise ConfigError with one line per problem."""
    path = Path(path)
    try:
        raw = msgspec.toml.decode(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file (use --config or $EXCHANGE_CONFIG)"]) from None
    except msgspec.DecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_settings(raw, source=str(path), base=path.parent)


def parse_settings(raw: Any, *, source: str = "<config>", base: Path | None = None) -> Settings:
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError([f"{source}: {_name_the_key(raw, exc)}"]) from None
    if base is not None:
        settings = _resolve_paths(settings, base)
    settings = _resolve_env_secrets(settings)
    problems = [f"{source}: {p}" for p in check_settings(settings)]
    if problems:
        raise ConfigError(problems)
    return settings


def _name_the_key(raw: Any, exc: msgspec.ValidationError) -> str:
    """msgspec writes dict keys as `[...]`; find which purpose failed so the message names it."""
    message = str(exc)
    if "$.purposes[...]" in message and isinstance(raw, dict) and isinstance(raw.get("purposes"), dict):
        for name, value in raw["purposes"].items():
            try:
                msgspec.convert(value, Purpose)
            except msgspec.ValidationError:
                return message.replace("$.purposes[...]", f"$.purposes.{name!r}")
    return message


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None or Path(value).is_absolute():
        return value
    return str(base / value)


def _resolve_paths(s: Settings, base: Path) -> Settings:
    store = s.store
    if store.url.startswith("sqlite:///") and store.url != "sqlite:///:memory:":
        file = store.url[len("sqlite:///") :]
        store = msgspec.structs.replace(store, url="sqlite:///" + str(_resolve(base, file)))
    signing = msgspec.structs.replace(
        s.signing,
        kek_file=_resolve(base, s.signing.kek_file),
        previous_kek_file=_resolve(base, s.signing.previous_kek_file),
    )
    issuers = [msgspec.structs.replace(t, jwks_file=_resolve(base, t.jwks_file)) for t in s.trusted_issuers]
    clients = [msgspec.structs.replace(c, jwks_file=_resolve(base, c.jwks_file)) for c in s.clients]
    dev = s.dev_issuer
    if dev is not None:
        dev = msgspec.structs.replace(dev, key_file=str(_resolve(base, dev.key_file)))
    return msgspec.structs.replace(
        s, store=store, signing=signing, trusted_issuers=issuers, clients=clients, dev_issuer=dev
    )


def _resolve_env_secrets(s: Settings) -> Settings:
    clients = []
    for c in s.clients:
        if c.secret_hash_env and c.secret_hash is None and os.environ.get(c.secret_hash_env):
            c = msgspec.structs.replace(c, secret_hash=os.environ[c.secret_hash_env])
        clients.append(c)
    return msgspec.structs.replace(s, clients=clients)


def is_loopback_http(url: str) -> bool:
    """A plain-http URL of this machine (127.0.0.0/8, ::1, localhost): where dev-only parts may run."""
    parts = urlsplit(url)
    return parts.scheme == "http" and is_loopback_host(parts.hostname or "")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_url(value: str, *, loopback_http: bool = True) -> bool:
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.netloc:
        return True
    return loopback_http and parts.scheme == "http" and parts.hostname in {"127.0.0.1", "localhost", "::1"}


def check_settings(s: Settings) -> list[str]:
    """Cross-field checks that a type cannot express. One message per problem."""
    problems: list[str] = []
    if urlsplit(s.issuer).scheme not in {"http", "https"} or not urlsplit(s.issuer).netloc:
        problems.append(f"issuer: expected an http(s) URL, got {s.issuer!r}")
    elif urlsplit(s.issuer).scheme == "http" and not _is_url(s.issuer):
        problems.append("issuer: plain http is only allowed for loopback hosts; use https")
    if s.issuer.endswith("/"):
        problems.append("issuer: must not end with '/' (it is compared exactly by verifiers)")
    seen: set[str] = set()
    for i, t in enumerate(s.trusted_issuers):
        problems += _check_issuer(i, t)
        if t.issuer in seen:
            problems.append(f"trusted_issuers[{i}].issuer: {t.issuer!r} is listed twice")
        seen.add(t.issuer)
    if s.dev_issuer is not None and s.dev_issuer.issuer in seen:
        problems.append(f"dev_issuer.issuer: {s.dev_issuer.issuer!r} is also a trusted issuer")
    if s.dev_issuer is not None:
        # It signs anyone in as anyone: a development setup on one machine only, never one that looks
        # like a deployment (https, a real host name), so a copied dev section cannot go live.
        for key, url in (("issuer", s.issuer), ("dev_issuer.issuer", s.dev_issuer.issuer)):
            if not is_loopback_http(url):
                problems.append(
                    f"{key}: {url!r} is not a plain-http loopback URL, and [dev_issuer] (which signs anyone"
                    " in as anyone) runs only on a loopback development setup; remove [dev_issuer]"
                )
    if s.issuer in seen:
        problems.append(
            "trusted_issuers: the exchange must not trust its own purpose tokens as subject tokens"
        )
    if s.metrics.listen is not None:
        try:
            split_host_port(s.metrics.listen)
        except ValueError as exc:
            problems.append(f"metrics.{exc}")
    problems += lifecycle.check(s)
    client_ids: set[str] = set()
    for i, c in enumerate(s.clients):
        problems += _check_client(i, c, s.purposes)
        if c.client_id in client_ids:
            problems.append(f"clients[{i}].client_id: {c.client_id!r} is listed twice")
        client_ids.add(c.client_id)
    if s.txn_tokens is not None:
        problems += _check_txn_tokens(s.txn_tokens, s)
    return problems


def _check_txn_tokens(t: TxnTokens, s: Settings) -> list[str]:
    """[txn_tokens]: the workloads are real, authenticated clients with what their subject kinds need."""
    problems: list[str] = []
    clients = {c.client_id: c for c in s.clients}
    issuers = {i.issuer for i in s.trusted_issuers} | ({s.dev_issuer.issuer} if s.dev_issuer else set())
    # A Txn-Token's sub is "<namespace> <sub>" (schemas.claims.txn_subject): no namespace has a space.
    for name in sorted(n for n in issuers if any(c.isspace() for c in n)):
        problems.append(f"trusted_issuers: {name!r} contains a space, which a Txn-Token sub cannot carry")
    for name, purpose in s.purposes.items():
        if t.trust_domain in purpose.audiences:
            problems.append(
                f"purposes.{name!r}.audience: {t.trust_domain!r} is the Txn-Token trust domain; a purpose"
                " token must name one service, not the whole trust domain"
            )
    seen: set[str] = set()
    for i, w in enumerate(t.workloads):
        where = f"txn_tokens.workloads[{i}] ({w.client_id})"
        if w.client_id in seen:
            problems.append(f"{where}: listed twice")
        seen.add(w.client_id)
        if WORKLOAD_SEPARATOR in w.client_id:
            problems.append(f"{where}: a workload id may not contain {WORKLOAD_SEPARATOR!r} (req_wl)")
        client = clients.get(w.client_id)
        if client is None:
            problems.append(f"{where}: not a configured client")
            continue
        if client.auth_method == "none":
            # Draft §11.5: the TTS MUST authenticate the workload; a public client proves nothing.
            problems.append(f"{where}: a workload must authenticate (its client's auth_method is none)")
        if "self_signed" in w.subject_token_types and client.jwks_file is None and client.jwks_uri is None:
            problems.append(f"{where}: self_signed subjects need the client's keys (jwks_file or jwks_uri)")
        if w.subject_namespace is not None and w.subject_namespace not in issuers:
            problems.append(
                f"{where}.subject_namespace: {w.subject_namespace!r} is not a trusted issuer (unset: the"
                " workload's own namespace)"
            )
        if (
            w.subject_namespace is None
            and {"self_signed", "unsigned_json"} & set(w.subject_token_types)
            and w.client_id in issuers | {s.issuer}
        ):
            # Its subjects' namespace is its client id: that of an identity provider's users (or ours)
            # would let it name them without a subject_namespace saying it may (draft §8.2).
            problems.append(
                f"{where}: its client id is the issuer {w.client_id!r}, so the subjects it names would pass"
                " for that issuer's users; rename the client, or set subject_namespace to say it may"
            )
        if w.subject_namespace is not None and not {"self_signed", "unsigned_json"} & set(
            w.subject_token_types
        ):
            problems.append(f"{where}.subject_namespace: only used with self_signed or unsigned_json")
    return problems


def _check_issuer(i: int, t: TrustedIssuer) -> list[str]:
    where = f"trusted_issuers[{i}] ({t.issuer})"
    if (t.jwks_file is None) == (t.jwks_uri is None):
        return [f"{where}: set exactly one of jwks_file or jwks_uri"]
    if t.jwks_uri is not None and not _is_url(t.jwks_uri):
        return [f"{where}.jwks_uri: must be https (plain http only for loopback)"]
    if t.jwks_file is not None and not Path(t.jwks_file).is_file():
        return [f"{where}.jwks_file: {t.jwks_file} does not exist"]
    return []


def _check_client(i: int, c: Client, purposes: dict[str, Purpose]) -> list[str]:
    where = f"clients[{i}] ({c.client_id})"
    problems = []
    if c.auth_method in {"client_secret_basic", "client_secret_post"}:
        if not c.secret_hash:
            source = f" (${c.secret_hash_env} is not set)" if c.secret_hash_env else ""
            problems.append(f"{where}.secret_hash: required for auth_method {c.auth_method!r}{source}")
        elif not c.secret_hash.startswith("scrypt$"):
            problems.append(f"{where}.secret_hash: not a hash from `exchange clients hash-secret`")
    elif c.secret_hash or c.secret_hash_env:
        problems.append(f"{where}.secret_hash: only used with client_secret_basic or client_secret_post")
    if c.auth_method == "private_key_jwt" and (c.jwks_file is None) == (c.jwks_uri is None):
        problems.append(f"{where}: private_key_jwt needs exactly one of jwks_file or jwks_uri")
    for name in c.purposes:
        if name not in purposes:
            problems.append(f"{where}.purposes: unknown purpose {name!r}")
    return problems
