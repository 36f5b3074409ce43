"""Where verification keys come from: a JWKS fetched over HTTPS and cached, or a static JWKS file.

Both sources answer the same questions: `await get_key(kid)` and `get_key_sync(kid)` (may fetch: the
second blocks, for Flask, Django and other code without an event loop), `get_cached_key(kid)` (never
does I/O), and for a token without a kid `await get_keys()` / `get_keys_sync()` / `cached_keys()`:
every key of the set, which is bounded by `max_keys`. The exchange uses these sources
for its identity providers' and its clients' keys too, so nothing here is specific to purpose tokens.
`key_source(...)` is the one factory that turns configuration (a file, a URI, or an issuer whose
`/.well-known/jwks.json` holds its keys) into a source.

Cache policy, in one place:
- a fetched set is fresh for the response's Cache-Control max-age, clamped to [min_ttl, max_ttl];
- an unknown kid in a fresh set triggers a refresh at most once per `cooldown` (keys rotate, but a
  stream of made-up kids must not turn us into a request amplifier against the issuer);
- concurrent callers share one fetch in flight (single-flight): coroutines join one task, threads wait
  on one lock and take the result of the fetch that ran while they waited;
- when a refresh fails, the last good set keeps serving for `max_stale` seconds past its freshness,
  then the cache fails closed (no keys at all) until a fetch succeeds again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol
from urllib.parse import urlsplit

import httpx
import msgspec
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key

from exchange.verify.compact import b64url_decode
from exchange.verify.errors import VerificationError
from exchange.verify.strictjson import AmbiguousJSON, refuse_duplicates

log = logging.getLogger("exchange.verify")

_ACCEPT: Final = {"Accept": "application/jwk-set+json, application/json"}

DEFAULT_MAX_KEYS: Final = 32
DEFAULT_MAX_BYTES: Final = 64 * 1024
#: The shortest a JWKSCache holds a set, whatever its max-age says (the exchange's key rotation waits
#: at least this long before a newly published key signs).
DEFAULT_MIN_TTL: Final = 60.0
# RFC 7518 §3.3 requires 2048-bit RSA keys or larger; a shorter one in a JWKS is ignored, not trusted.
MIN_RSA_BITS: Final = 2048
# A modulus past this costs a verifier seconds per signature check: a denial of service, not a key.
MAX_RSA_BITS: Final = 8192
# Every real signing key uses F4; a small exponent (3) invites forgery against sloppy verifiers, and a
# huge one is a cost attack. Anything else is ignored.
RSA_EXPONENTS: Final = frozenset({65537})
MAX_KID_LENGTH: Final = 256


class KeySource(Protocol):
    """Anything that finds a public verification key by kid."""

    async def get_key(self, kid: str) -> Key:
        """Return the key for `kid`, fetching if the source allows; raise VerificationError("unknown_key")."""
        ...

    def get_cached_key(self, kid: str) -> Key | None:
        """Return the key for `kid` if it is already at hand and usable; never does I/O."""
        ...

    async def get_keys(self) -> tuple[Key, ...]:
        """Every usable key (for a token without a kid), fetching a stale or missing set first."""
        ...

    def cached_keys(self) -> tuple[Key, ...]:
        """Every usable key already at hand; never does I/O."""
        ...

    def get_key_sync(self, kid: str) -> Key:
        """`get_key` for code without an event loop: may fetch, blocking the calling thread."""
        ...

    def get_keys_sync(self) -> tuple[Key, ...]:
        """`get_keys` for code without an event loop: may fetch, blocking the calling thread."""
        ...


class UnknownKid(VerificationError):
    """The source's keys are at hand but none has this kid; `refetch_suppressed`: the set was not
    fetched again to look for it, because the last attempt was within the cooldown."""

    def __init__(self, detail: str, *, refetch_suppressed: bool = False) -> None:
        super().__init__("unknown_key", detail)
        self.refetch_suppressed = refetch_suppressed


@dataclass(frozen=True, slots=True)
class CacheState:
    """A JWKSCache as an operator sees it (readiness, metrics); ages in seconds, None when never."""

    state: Literal["fresh", "stale", "unusable"]
    kids: int
    fetches: int
    failures: int
    refetches_suppressed: int
    last_success_age: float | None
    fresh_for: float  # seconds until the set needs refreshing (negative: overdue)
    usable_for: float  # seconds until it may no longer be used (negative: it may not)
    last_error: str | None


class JWKSError(ValueError):
    """A JWKS document or response could not be used (bad JSON, too large, too many keys, no keys)."""


class _JWKSDocument(msgspec.Struct):
    # Lenient on purpose: a JWKS may carry members we do not use; only `keys` matters.
    keys: list[dict[str, Any]]


_DOCUMENT_DECODER: Final = msgspec.json.Decoder(_JWKSDocument)


def parse_jwks(document: bytes | Mapping[str, Any], *, max_keys: int = DEFAULT_MAX_KEYS) -> dict[str, Key]:
    """Import the public signature keys of a JWKS, by kid. Raises JWKSError if none is usable.

    Keys we must never verify with are dropped, not trusted: symmetric (`oct`) keys, keys that carry
    private material, keys marked for encryption, RSA keys outside 2048-8192 bits or with an exponent
    other than 65537, and kids longer than 256 characters. Unknown key types are ignored (RFC 7517 §5).
    A document that repeats a member name anywhere is refused: which of two `n` would we trust?
    """
    try:
        if isinstance(document, bytes | bytearray | memoryview):
            raw = bytes(document)
            decoded = _DOCUMENT_DECODER.decode(raw)
            refuse_duplicates(raw, msgspec.json.decode(raw))
            raw_keys = decoded.keys
        else:
            raw_keys = msgspec.convert(document, _JWKSDocument).keys
    except (msgspec.MsgspecError, AmbiguousJSON) as exc:
        raise JWKSError(f"not a JWKS document: {exc}") from exc
    if len(raw_keys) > max_keys:
        raise JWKSError(f"JWKS has {len(raw_keys)} keys, more than the cap of {max_keys}")

    keys: dict[str, Key] = {}
    for data in raw_keys:
        kty = data.get("kty")
        if kty == "oct" or data.get("use", "sig") != "sig" or "d" in data:
            log.warning("jwks_key_ignored kty=%s kid=%s", kty, data.get("kid"))
            continue
        if kty == "RSA" and not _acceptable_rsa(data):
            log.warning(
                "jwks_key_ignored kty=RSA kid=%s error=modulus or exponent not accepted", data.get("kid")
            )
            continue
        try:
            key = JWKRegistry.import_key(data)
        except (JoseError, ValueError, TypeError) as exc:
            log.warning("jwks_key_ignored kty=%s kid=%s error=%s", kty, data.get("kid"), exc)
            continue
        kid_member = data.get("kid")
        if kid_member is not None and (not isinstance(kid_member, str) or len(kid_member) > MAX_KID_LENGTH):
            log.warning("jwks_key_ignored kty=%s error=kid is not a short string", kty)
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


def _acceptable_rsa(data: Mapping[str, Any]) -> bool:
    """2048-8192 bit modulus, exponent 65537; judged before import, so joserfc never builds the key."""
    n, e = data.get("n"), data.get("e")
    if not isinstance(n, str) or not isinstance(e, str) or len(n) > 2 * MAX_RSA_BITS // 8:
        return False
    try:
        modulus = int.from_bytes(b64url_decode(n.encode("ascii")), "big")
        exponent = int.from_bytes(b64url_decode(e.encode("ascii")), "big")
    except (ValueError, UnicodeEncodeError):
        return False
    return MIN_RSA_BITS <= modulus.bit_length() <= MAX_RSA_BITS and exponent in RSA_EXPONENTS


class StaticJWKS:
    """A fixed key set, for air-gapped services and tests: `StaticJWKS.from_file("jwks.json")`."""

    def __init__(self, jwks: Mapping[str, Any] | bytes, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._keys = parse_jwks(jwks, max_keys=max_keys)
        self._all = tuple(self._keys.values())

    @classmethod
    def from_file(cls, path: str | Path, *, max_keys: int = DEFAULT_MAX_KEYS) -> StaticJWKS:
        """Load a JWKS JSON file; a bad file is a ValueError naming the file."""
        try:
            return cls(Path(path).read_bytes(), max_keys=max_keys)
        except (OSError, JWKSError) as exc:
            raise ValueError(f"{path}: cannot load JWKS: {exc}") from exc

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    async def get_key(self, kid: str) -> Key:
        return self.get_key_sync(kid)

    def get_key_sync(self, kid: str) -> Key:
        key = self._keys.get(kid)
        if key is None:
            raise VerificationError("unknown_key", f"kid {kid!r} is not in the static JWKS")
        return key

    def get_cached_key(self, kid: str) -> Key | None:
        return self._keys.get(kid)

    async def get_keys(self) -> tuple[Key, ...]:
        return self._all

    def get_keys_sync(self) -> tuple[Key, ...]:
        return self._all

    def cached_keys(self) -> tuple[Key, ...]:
        return self._all


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
        min_ttl: float = DEFAULT_MIN_TTL,
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
        # Threads (verify() under a WSGI server) single-flight on this lock; `_fetches` tells a thread
        # that waited whether a fetch completed meanwhile, so it reads that result instead of fetching.
        self._sync_lock = threading.Lock()
        self._fetches = 0
        #: Fetch attempts so far (successful or not); for tests and metrics.
        self.fetch_count = 0
        #: Failed fetch attempts so far.
        self.failure_count = 0
        #: Unknown kids that were not looked for again because of the cooldown.
        self.suppressed_count = 0
        #: Why the last fetch failed, or None after a success.
        self.last_error: str | None = None
        self._last_success: float | None = None

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys) if self._clock() < self._usable_until else frozenset()

    def get_cached_key(self, kid: str) -> Key | None:
        # Past max_stale the set is unusable: failing closed is the point of bounded staleness.
        if self._clock() >= self._usable_until:
            return None
        return self._keys.get(kid)

    def cached_keys(self) -> tuple[Key, ...]:
        if self._clock() >= self._usable_until:
            return ()
        return tuple(self._keys.values())

    def _due(self, kid: str | None) -> bool:
        """The one refresh policy, for both paths: is a fetch due for `kid` (None: a kid-less token)?"""
        now = self._clock()
        if now < self._fresh_until:
            if kid is None or kid in self._keys:
                return False
            # Fresh set, unknown kid: maybe a rotation, maybe a made-up kid. Once per cooldown.
            return now - self._last_attempt >= self._cooldown
        # Expired or never fetched: refresh now, unless the last attempt failed within the cooldown.
        return self.last_error is None or now - self._last_attempt >= self._cooldown

    def _found(self, kid: str, fetched: bool) -> Key:
        """The key after any fetch, or why there is none: keys unavailable, or an unknown kid."""
        key = self.get_cached_key(kid)
        if key is not None:
            return key
        if self.last_error is not None and (fetched or self._clock() >= self._usable_until):
            # Not "unknown kid": we could not look (the fetch for it failed, or no usable set is left).
            raise VerificationError(
                "keys_unavailable", f"the JWKS at {self.uri} could not be fetched: {self.last_error}"
            )
        if not fetched:
            self.suppressed_count += 1
        raise UnknownKid(
            f"kid {kid!r} is not in the JWKS at {self.uri}"
            + ("" if fetched else " (not fetched again: within the refetch cooldown)"),
            refetch_suppressed=not fetched,
        )

    async def get_keys(self) -> tuple[Key, ...]:
        # A fetch already in flight is always joined: that costs the issuer nothing.
        if self._inflight is not None or self._due(None):
            await self.refresh()
        return self.cached_keys()

    async def get_key(self, kid: str) -> Key:
        if self._clock() < self._fresh_until:
            key = self._keys.get(kid)
            if key is not None:
                return key  # the hot path: a fresh set that has the kid
        # A fetch already in flight is always joined: that costs the issuer nothing.
        fetched = self._inflight is not None or self._due(kid)
        if fetched:
            await self.refresh()
        return self._found(kid, fetched)

    def get_keys_sync(self) -> tuple[Key, ...]:
        if self._sync_lock.locked() or self._due(None):
            self.refresh_sync()
        return self.cached_keys()

    def get_key_sync(self, kid: str) -> Key:
        if self._clock() < self._fresh_until:
            key = self._keys.get(kid)
            if key is not None:
                return key
        fetched = self._sync_lock.locked() or self._due(kid)
        if fetched:
            self.refresh_sync()
        return self._found(kid, fetched)

    def refresh_sync(self) -> None:
        """Fetch now from this thread, or wait for the fetch another thread is running and use its
        result. Failures are recorded in `last_error`, not raised."""
        seen = self._fetches
        # Bounded: a fetch holding the lock ends within its own timeout.
        if not self._sync_lock.acquire(timeout=self._timeout + 1.0):
            return
        try:
            if self._fetches != seen:
                return  # another thread fetched while this one waited: single flight
            self._begin()
            try:
                with httpx.Client(timeout=self._timeout, follow_redirects=False) as client:
                    with client.stream("GET", self.uri, headers=_ACCEPT) as response:
                        self._check_status(response)
                        body = self._capped(response.iter_bytes())
                        ttl = self._ttl(response.headers)
                keys = parse_jwks(body, max_keys=self._max_keys)
            except (httpx.HTTPError, JWKSError) as exc:
                self._failed(exc)
            else:
                self._stored(keys, ttl)
        finally:
            self._sync_lock.release()

    def state(self) -> CacheState:
        """Where this cache stands now (never does I/O)."""
        now = self._clock()
        if now < self._fresh_until:
            state: Literal["fresh", "stale", "unusable"] = "fresh"
        elif now < self._usable_until:
            state = "stale"
        else:
            state = "unusable"
        return CacheState(
            state=state,
            kids=len(self._keys) if state != "unusable" else 0,
            fetches=self.fetch_count,
            failures=self.failure_count,
            refetches_suppressed=self.suppressed_count,
            last_success_age=None if self._last_success is None else now - self._last_success,
            fresh_for=self._fresh_until - now,
            usable_for=self._usable_until - now,
            last_error=self.last_error,
        )

    def refresh_due(self, *, ahead: float = 0.1) -> bool:
        """Should a background refresh fetch now? Before the set goes stale (the last `ahead` share of
        its freshness), or when never fetched; after a failure, once per cooldown."""
        now = self._clock()
        if self._inflight is not None:
            return False
        if self.last_error is not None:
            return now - self._last_attempt >= self._cooldown
        if self._last_success is None:
            return True
        lifetime = self._fresh_until - self._last_success
        return now >= self._fresh_until - max(lifetime * ahead, 1.0)

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
        self._begin()
        try:
            async with asyncio.timeout(self._timeout):
                body, ttl = await self._download()
            keys = parse_jwks(body, max_keys=self._max_keys)
        except (httpx.HTTPError, JWKSError, TimeoutError) as exc:
            self._failed(exc)
            return
        self._stored(keys, ttl)

    def _begin(self) -> None:
        self._last_attempt = self._clock()
        self.fetch_count += 1

    def _failed(self, exc: Exception) -> None:
        self.failure_count += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        stale_for = self._clock() - self._fresh_until
        log.warning("jwks_fetch_failed uri=%s error=%s stale_for=%.0f", self.uri, self.last_error, stale_for)
        if self._clock() >= self._usable_until:
            self._keys = {}
        self._fetches += 1

    def _stored(self, keys: dict[str, Key], ttl: float) -> None:
        now = self._clock()
        self._keys = keys
        self._fresh_until = now + ttl
        self._usable_until = self._fresh_until + self._max_stale
        self._last_success = now
        self.last_error = None
        self._fetches += 1
        log.info("jwks_fetched uri=%s kids=%s ttl=%.0f", self.uri, ",".join(sorted(keys)), ttl)

    async def _download(self) -> tuple[bytes, float]:
        if self._client is not None:
            return await self._download_with(self._client)
        # Redirects stay off: a redirect could downgrade https or leave the configured host.
        async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as client:
            return await self._download_with(client)

    async def _download_with(self, client: httpx.AsyncClient) -> tuple[bytes, float]:
        async with client.stream("GET", self.uri, headers=_ACCEPT) as response:
            self._check_status(response)
            body = bytearray()
            # Counted after content decoding, so a compressed bomb hits the cap too.
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._max_bytes:
                    raise JWKSError(f"response exceeds the cap of {self._max_bytes} bytes")
            return bytes(body), self._ttl(response.headers)

    def _check_status(self, response: httpx.Response) -> None:
        if response.status_code != 200:
            raise JWKSError(f"HTTP {response.status_code}")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            raise JWKSError(f"response of {declared} bytes exceeds the cap of {self._max_bytes}")

    def _capped(self, chunks: Iterable[bytes]) -> bytes:
        body = bytearray()
        # Counted after content decoding, so a compressed bomb hits the cap too.
        for chunk in chunks:
            body += chunk
            if len(body) > self._max_bytes:
                raise JWKSError(f"response exceeds the cap of {self._max_bytes} bytes")
        return bytes(body)

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


def key_source(
    *,
    jwks_file: str | Path | None = None,
    jwks_uri: str | None = None,
    jwks: Mapping[str, Any] | KeySource | None = None,
    issuer: str | None = None,
    **cache: Any,
) -> KeySource:
    """The one way configuration becomes a KeySource: exactly one of `jwks_file` (read once),
    `jwks_uri` (fetched and cached), `jwks` (a JWKS dict, or a ready KeySource) or, failing all three,
    `issuer`, whose keys are at `{issuer}/.well-known/jwks.json`. `cache` goes to JWKSCache
    (cooldown, allow_insecure_http, clock, client, ...). ValueError when it does not add up.
    """
    given = [
        name for name, value in (("jwks_file", jwks_file), ("jwks_uri", jwks_uri), ("jwks", jwks)) if value
    ]
    if len(given) > 1:
        raise ValueError(f"pass one of jwks_file, jwks_uri or jwks, not {' and '.join(given)}")
    if jwks_file:
        return StaticJWKS.from_file(jwks_file)
    if isinstance(jwks, Mapping):
        return StaticJWKS(jwks)
    if jwks is not None:
        return jwks
    if not jwks_uri:
        if not issuer:
            raise ValueError("no key source: pass jwks_file, jwks_uri, jwks or issuer")
        jwks_uri = issuer.rstrip("/") + "/.well-known/jwks.json"
    return JWKSCache(jwks_uri, **cache)
