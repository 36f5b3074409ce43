"""Where verification keys come from: a JWKS fetched over HTTPS and cached, or a static JWKS file.

Both sources answer the same two questions: `await get_key(kid)` (may fetch) and `get_cached_key(kid)`
(never does I/O, for the synchronous hot path). The exchange server uses `JWKSCache` for its identity
providers' keys too, so nothing here is specific to purpose tokens.

Cache policy, in one place:
- a fetched set is fresh for the response's Cache-Control max-age, clamped to [min_ttl, max_ttl];
- an unknown kid in a fresh set triggers a refresh at most once per `cooldown` (keys rotate, but a
  stream of made-up kids must not turn us into a request amplifier against the issuer);
- concurrent callers share one fetch in flight (single-flight);
- when a refresh fails, the last good set keeps serving for `max_stale` seconds past its freshness,
  then the cache fails closed (no keys at all) until a fetch succeeds again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import httpx
import msgspec
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key, RSAKey

from exchange.verify.errors import VerificationError

log = logging.getLogger("exchange.verify")

DEFAULT_MAX_KEYS: Final = 32
DEFAULT_MAX_BYTES: Final = 64 * 1024
# RFC 7518 §3.3 requires 2048-bit RSA keys or larger; a shorter one in a JWKS is ignored, not trusted.
MIN_RSA_BITS: Final = 2048


class KeySource(Protocol):
    """Anything that finds a public verification key by kid."""

    async def get_key(self, kid: str) -> Key:
        """Return the key for `kid`, fetching if the source allows; raise VerificationError("unknown_key")."""
        ...

    def get_cached_key(self, kid: str) -> Key | None:
        """Return the key for `kid` if it is already at hand and usable; never does I/O."""
        ...


class JWKSError(ValueError):
    """A JWKS document or response could not be used (bad JSON, too large, too many keys, no keys)."""


class _JWKSDocument(msgspec.Struct):
    # Lenient on purpose: a JWKS may carry members we do not use; only `keys` matters.
    keys: list[dict[str, Any]]


_DOCUMENT_DECODER: Final = msgspec.json.Decoder(_JWKSDocument)


def parse_jwks(document: bytes | Mapping[str, Any], *, max_keys: int = DEFAULT_MAX_KEYS) -> dict[str, Key]:
    """Import the public signature keys of a JWKS, by kid. Raises JWKSError if none is usable.

    Keys we must never verify with are dropped, not trusted: symmetric (`oct`) keys, keys that carry
    private material, keys marked for encryption, and RSA keys under 2048 bits. Unknown key types
    are ignored (RFC 7517 §5).
    """
    try:
        if isinstance(document, bytes | bytearray | memoryview):
            raw_keys = _DOCUMENT_DECODER.decode(document).keys
        else:
            raw_keys = msgspec.convert(document, _JWKSDocument).keys
    except msgspec.MsgspecError as exc:
        raise JWKSError(f"not a JWKS document: {exc}") from exc
    if len(raw_keys) > max_keys:
        raise JWKSError(f"JWKS has {len(raw_keys)} keys, more than the cap of {max_keys}")

    keys: dict[str, Key] = {}
    for data in raw_keys:
        kty = data.get("kty")
        if kty == "oct" or data.get("use", "sig") != "sig" or "d" in data:
            log.warning("jwks_key_ignored kty=%s kid=%s", kty, data.get("kid"))
            continue
        try:
            key = JWKRegistry.import_key(data)
        except (JoseError, ValueError, TypeError) as exc:
            log.warning("jwks_key_ignored kty=%s kid=%s error=%s", kty, data.get("kid"), exc)
            continue
        if isinstance(key, RSAKey) and key.public_key.key_size < MIN_RSA_BITS:
            log.warning(
                "jwks_key_ignored kty=RSA kid=%s error=key shorter than %d bits",
                data.get("kid"),
                MIN_RSA_BITS,
            )
            continue
        key.ensure_kid()
        kid = key.kid
        assert kid is not None  # ensure_kid sets the RFC 7638 thumbprint when the JWK has none
        if kid in keys:
            # Two keys under one kid: neither can be picked safely, so the first published one wins
            # and the duplicate is logged for the operator.
            log.warning("jwks_duplicate_kid kid=%s", kid)
            continue
        keys[kid] = key
    if not keys:
        raise JWKSError("JWKS has no usable public signature key")
    return keys


class StaticJWKS:
    """A fixed key set, for air-gapped services and tests: `StaticJWKS.from_file("jwks.json")`."""

    def __init__(self, jwks: Mapping[str, Any], *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._keys = parse_jwks(jwks, max_keys=max_keys)

    @classmethod
    def from_file(cls, path: str | Path, *, max_keys: int = DEFAULT_MAX_KEYS) -> StaticJWKS:
        """Load a JWKS JSON file; a bad file is a ValueError naming the file."""
        try:
            data = Path(path).read_bytes()
            document = msgspec.json.decode(data)
            if not isinstance(document, dict):
                raise JWKSError("top level is not a JSON object")
            return cls(document, max_keys=max_keys)
        except (OSError, msgspec.MsgspecError, JWKSError) as exc:
            raise ValueError(f"{path}: cannot load JWKS: {exc}") from exc

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    async def get_key(self, kid: str) -> Key:
        key = self._keys.get(kid)
        if key is None:
            raise VerificationError("unknown_key", f"kid {kid!r} is not in the static JWKS")
        return key

    def get_cached_key(self, kid: str) -> Key | None:
        return self._keys.get(kid)


class JWKSCache:
    """A JWKS fetched from `uri` and cached by the rules in the module docstring.

    `clock` is monotonic seconds and injectable, so freshness, cooldown and staleness are testable
    without sleeping. Pass `client` to share an httpx.AsyncClient (its redirect and proxy settings then
    apply: keep follow_redirects off); otherwise each (rare) fetch opens and closes its own, which keeps
    the cache free of event-loop ties. `allow_insecure_http` admits
    plain http to any host: only for a private network you control (a compose file), never otherwise,
    since whoever can alter the response can mint tokens this cache will accept.
    """

    def __init__(
        self,
        uri: str,
        *,
        timeout: float = 5.0,
        min_ttl: float = 60.0,
        max_ttl: float = 86400.0,
        default_ttl: float = 300.0,
        cooldown: float = 30.0,
        max_stale: float = 3600.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
        client: httpx.AsyncClient | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        require_secure_uri(uri, allow_insecure_http=allow_insecure_http)
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError("JWKSCache needs 0 <= min_ttl <= max_ttl")
        if timeout <= 0 or cooldown < 0 or max_stale < 0 or max_bytes <= 0 or max_keys <= 0:
            raise ValueError(
                "JWKSCache timeout, max_bytes and max_keys must be positive; cooldown, max_stale >= 0"
            )
        self.uri = uri
        self._timeout = timeout
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._default_ttl = min(max(default_ttl, min_ttl), max_ttl)
        self._cooldown = cooldown
        self._max_stale = max_stale
        self._max_bytes = max_bytes
        self._max_keys = max_keys
        self._clock = clock
        self._client = client
        self._keys: dict[str, Key] = {}
        self._fresh_until = -math.inf
        self._usable_until = -math.inf
        self._last_attempt = -math.inf
        self._inflight: asyncio.Task[None] | None = None
        #: Fetch attempts so far (successful or not); for tests and metrics.
        self.fetch_count = 0
        #: Why the last fetch failed, or None after a success.
        self.last_error: str | None = None

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys) if self._clock() < self._usable_until else frozenset()

    def get_cached_key(self, kid: str) -> Key | None:
        # Past max_stale the set is unusable: failing closed is the point of bounded staleness.
        if self._clock() >= self._usable_until:
            return None
        return self._keys.get(kid)

    async def get_key(self, kid: str) -> Key:
        now = self._clock()
        if now < self._fresh_until:
            key = self._keys.get(kid)
            if key is not None:
                return key
            # Fresh set, unknown kid: maybe a rotation, maybe a made-up kid. Once per cooldown.
            due = now - self._last_attempt >= self._cooldown
        else:
            # Expired or never fetched: refresh now, unless the last attempt failed within the cooldown.
            due = self.last_error is None or now - self._last_attempt >= self._cooldown
        # A fetch already in flight is always joined: that costs the issuer nothing.
        if self._inflight is not None or due:
            await self.refresh()
        key = self.get_cached_key(kid)
        if key is None:
            raise VerificationError("unknown_key", f"kid {kid!r} is not in the JWKS at {self.uri}")
        return key

    async def refresh(self) -> None:
        """Fetch now, or join the fetch in flight. Failures are recorded in `last_error`, not raised."""
        loop = asyncio.get_running_loop()
        task = self._inflight
        if task is None or task.get_loop() is not loop:
            task = loop.create_task(self._fetch())
            self._inflight = task
            task.add_done_callback(self._fetch_done)
        # shield: a caller that gives up (client disconnect) must not cancel the fetch others wait on.
        await asyncio.shield(task)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self) -> None:
        self._last_attempt = self._clock()
        self.fetch_count += 1
        try:
            async with asyncio.timeout(self._timeout):
                body, ttl = await self._download()
            keys = parse_jwks(body, max_keys=self._max_keys)
        except (httpx.HTTPError, JWKSError, TimeoutError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            stale_for = self._clock() - self._fresh_until
            log.warning(
                "jwks_fetch_failed uri=%s error=%s stale_for=%.0f", self.uri, self.last_error, stale_for
            )
            if self._clock() >= self._usable_until:
                self._keys = {}
            return
        now = self._clock()
        self._keys = keys
        self._fresh_until = now + ttl
        self._usable_until = self._fresh_until + self._max_stale
        self.last_error = None
        log.info("jwks_fetched uri=%s kids=%s ttl=%.0f", self.uri, ",".join(sorted(keys)), ttl)

    async def _download(self) -> tuple[bytes, float]:
        if self._client is not None:
            return await self._download_with(self._client)
        # Redirects stay off: a redirect could downgrade https or leave the configured host.
        async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as client:
            return await self._download_with(client)

    async def _download_with(self, client: httpx.AsyncClient) -> tuple[bytes, float]:
        headers = {"Accept": "application/jwk-set+json, application/json"}
        async with client.stream("GET", self.uri, headers=headers) as response:
            if response.status_code != 200:
                raise JWKSError(f"HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
                raise JWKSError(f"response of {declared} bytes exceeds the cap of {self._max_bytes}")
            body = bytearray()
            # Counted after content decoding, so a compressed bomb hits the cap too.
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._max_bytes:
                    raise JWKSError(f"response exceeds the cap of {self._max_bytes} bytes")
            return bytes(body), self._ttl(response.headers)

    def _ttl(self, headers: httpx.Headers) -> float:
        max_age: float | None = None
        for directive in headers.get("cache-control", "").split(","):
            name, _, value = directive.strip().partition("=")
            name = name.lower()
            if name in ("no-store", "no-cache"):
                return self._min_ttl
            if name == "max-age" and value.strip('"').isdigit():
                max_age = float(value.strip('"'))
        if max_age is None:
            return self._default_ttl
        age = headers.get("age", "")
        if age.isdigit():
            max_age -= float(age)
        return min(max(max_age, self._min_ttl), self._max_ttl)


def require_secure_uri(uri: str, *, allow_insecure_http: bool = False, what: str = "JWKS URI") -> None:
    """https only, except http to a loopback host (a sidecar or a test server). ValueError otherwise.

    Whoever can alter what travels over plain http can forge keys (a JWKS) or steal credentials (a
    token endpoint), so every URL the verifier or the client library talks to passes here.
    """
    parts = urlsplit(uri)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and (allow_insecure_http or _is_loopback(parts.hostname)):
        return
    raise ValueError(f"{what} must be https (http only to a loopback host): {uri!r}")


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
