"""`PurposeTokenClient`: ask the exchange for purpose tokens, sync (`get`) or async (`aget`).

One call: prepare (validate the arguments, name the cache entry) → reuse a remembered token if the
rules allow (cache.py) → find the token endpoint (discovery.py, cached) → authenticate (auth.py, fresh
per attempt) → POST the RFC 8693 request with a timeout → a PurposeToken (token.py), or the typed
error (errors.py), retrying only what retry.py allows. The sync and async paths share every step but
the I/O itself.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any, Final

import httpx
import msgspec

from exchange.client.auth import ClientAuth, NoClientAuth
from exchange.client.cache import DEFAULT_MARGIN, DEFAULT_MAX_ENTRIES, ReuseCache
from exchange.client.discovery import (
    DEFAULT_METADATA_TTL,
    check_endpoint,
    metadata_url,
    token_endpoint_from,
)
from exchange.client.errors import (
    INVALID_RESPONSE,
    UNREACHABLE,
    InvalidRequest,
    PurposeTokenError,
    Unavailable,
    error_from_answer,
)
from exchange.client.request import Prepared, prepare
from exchange.client.retry import Retry
from exchange.client.token import TOKEN_ANSWER, PurposeToken, UnreadableToken, read_token
from exchange.verify.jwks import require_secure_uri
from schemas.wire import TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT

log = logging.getLogger("exchange.client")

DEFAULT_TIMEOUT: Final = 5.0
_HEADERS: Final = {"Accept": "application/json", "User-Agent": "purpose-exchange-client"}
# Failures that happen before the request left: trying again cannot repeat anything.
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class PurposeTokenClient:
    """Purpose tokens for one client app, from one exchange.

    Give `issuer` (the exchange's issuer URL: its token endpoint is discovered, RFC 8414, and kept
    for `metadata_ttl` seconds) or `token_endpoint`. `auth` is NoClientAuth() (default),
    ClientSecretBasic/ClientSecretPost(secret) or PrivateKeyJWT(key). Every HTTP call has `timeout`
    seconds; `retry` bounds the retries of an unavailable exchange. Tokens are reused by the rules in
    `exchange.client.cache`; `cache_size=0` turns reuse off. `clock` (epoch seconds), `sleep` and
    `async_sleep` are injectable for tests. Pass `http_client` / `async_http_client` to share
    connection pools (keep redirects off: a redirect would resend credentials elsewhere). `aget`
    keeps one AsyncClient: use it from one event loop and `aclose()` it there.
    """

    def __init__(
        self,
        client_id: str,
        *,
        issuer: str | None = None,
        token_endpoint: str | None = None,
        auth: ClientAuth | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
        cache_size: int = DEFAULT_MAX_ENTRIES,
        reuse_margin: float = DEFAULT_MARGIN,
        metadata_ttl: float = DEFAULT_METADATA_TTL,
        allow_insecure_http: bool = False,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not client_id:
            raise ValueError("client_id is required")
        if (issuer is None) == (token_endpoint is None):
            raise ValueError("give exactly one of issuer or token_endpoint")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.client_id = client_id
        self.issuer = issuer
        self._insecure = allow_insecure_http
        self._metadata_url: str | None = None
        if issuer is not None:
            self._metadata_url = metadata_url(issuer)
            require_secure_uri(self._metadata_url, allow_insecure_http=allow_insecure_http, what="issuer")
        self._endpoint = (
            None
            if token_endpoint is None
            else check_endpoint(token_endpoint, allow_insecure_http=allow_insecure_http)
        )
        self._endpoint_until = float("inf") if token_endpoint is not None else -float("inf")
        self._metadata_ttl = metadata_ttl
        self._auth: ClientAuth = auth or NoClientAuth()
        self._timeout = timeout
        self._timeouts = httpx.Timeout(timeout).as_dict()
        self._retry = retry or Retry()
        self._cache = ReuseCache(max_entries=cache_size, margin=reuse_margin, clock=clock)
        self._clock = clock
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._http, self._owns_http = http_client, http_client is None
        self._ahttp, self._owns_ahttp = async_http_client, async_http_client is None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        where = self.issuer if self.issuer is not None else self._endpoint
        return f"PurposeTokenClient(client_id={self.client_id!r}, exchange={where!r}, auth={self._auth!r})"

    # -- the public calls -----------------------------------------------------------------------------

    def get(
        self,
        purpose: str,
        subject_token: str,
        audience: str | None = None,
        authorization_details: Sequence[Mapping[str, Any]] | None = None,
        actor_token: str | None = None,
        *,
        subject_token_type: str = TOKEN_TYPE_ID_TOKEN,
        actor_token_type: str = TOKEN_TYPE_JWT,
    ) -> PurposeToken:
        """A purpose token for `purpose`, or a PurposeTokenError subclass (see errors.py)."""
        steps = self._steps(
            prepare(
                self._cache,
                purpose,
                subject_token,
                audience,
                authorization_details,
                actor_token,
                subject_token_type,
                actor_token_type,
            )
        )
        answer: httpx.Response | None = None
        failure: httpx.TransportError | None = None
        while True:
            try:
                step = steps.send(answer) if failure is None else steps.throw(failure)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            answer, failure = None, None
            if isinstance(step, float):
                self._sleep(step)
                continue
            try:
                answer = self._sync_http().send(step)
            except httpx.TransportError as exc:
                failure = exc

    async def aget(
        self,
        purpose: str,
        subject_token: str,
        audience: str | None = None,
        authorization_details: Sequence[Mapping[str, Any]] | None = None,
        actor_token: str | None = None,
        *,
        subject_token_type: str = TOKEN_TYPE_ID_TOKEN,
        actor_token_type: str = TOKEN_TYPE_JWT,
    ) -> PurposeToken:
        """`get` for asyncio: the same steps, with non-blocking I/O and sleeps."""
        steps = self._steps(
            prepare(
                self._cache,
                purpose,
                subject_token,
                audience,
                authorization_details,
                actor_token,
                subject_token_type,
                actor_token_type,
            )
        )
        answer: httpx.Response | None = None
        failure: httpx.TransportError | None = None
        while True:
            try:
                step = steps.send(answer) if failure is None else steps.throw(failure)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            answer, failure = None, None
            if isinstance(step, float):
                await self._async_sleep(step)
                continue
            try:
                answer = await self._async_http().send(step)
            except httpx.TransportError as exc:
                failure = exc

    def forget(self) -> None:
        """Drop every remembered token (they stay valid at the exchange's side until they expire)."""
        self._cache.clear()

    # -- shared steps ---------------------------------------------------------------------------------

    def _steps(self, call: Prepared) -> Generator[httpx.Request | float, httpx.Response | None, PurposeToken]:
        """One call, without I/O: yields each HTTP request to send (the driver sends back its response,
        or throws in the transport error) and each delay to sleep; returns the token or raises the
        typed error. `get` and `aget` only drive it, so the order of steps and the retry rules exist
        once."""
        reused = self._cache.get(call.key)
        if reused is not None:
            log.debug("purpose_token_reused purpose=%s jti=%s", call.purpose, reused.jti)
            return reused
        request_id, attempt = secrets.token_hex(8), 1
        while True:
            rid = request_id if attempt == 1 else f"{request_id}.{attempt}"
            try:
                endpoint = self._endpoint_or_none()
                if endpoint is None:
                    assert self._metadata_url is not None
                    # A GET is safe to repeat whatever went wrong with it.
                    metadata = self._http_request("GET", self._metadata_url, _HEADERS)
                    endpoint = self._discovered((yield from _send(metadata, None, retryable=True)))
                headers, form, sent_at = self._request(call, endpoint, rid)
                response = yield from _send(self._http_request("POST", endpoint, headers, form), rid)
                return self._accept(call, response, rid, sent_at)
            except Unavailable as failure:
                yield self._retry_delay(failure, attempt, call.purpose)
            attempt += 1

    def _http_request(
        self, method: str, url: str, headers: dict[str, str], form: dict[str, str] | None = None
    ) -> httpx.Request:
        # The timeout rides on the request, so it holds on an http client passed in as well.
        return httpx.Request(method, url, headers=headers, data=form, extensions={"timeout": self._timeouts})

    def _request(
        self, call: Prepared, endpoint: str, request_id: str
    ) -> tuple[dict[str, str], dict[str, str], float]:
        sent_at = self._clock()
        auth_headers, auth_form = self._auth.apply(self.client_id, endpoint, sent_at)
        return {**_HEADERS, "X-Request-ID": request_id, **auth_headers}, {**call.form, **auth_form}, sent_at

    def _accept(
        self, call: Prepared, response: httpx.Response, request_id: str, sent_at: float
    ) -> PurposeToken:
        """The token in a 200 answer (remembered if reusable), or the typed error of any other."""
        if response.status_code != 200:
            error = error_from_answer(
                response.status_code, response.headers, response.content, request_id=request_id
            )
            log.info(
                "purpose_token_denied purpose=%s error=%s denial=%s status=%d request_id=%s",
                call.purpose,
                error.error,
                error.denial,
                response.status_code,
                request_id,
            )
            raise error
        try:
            answer = TOKEN_ANSWER.decode(response.content)
            token = read_token(
                answer, purpose=call.purpose, audience=call.audience, sent_at=sent_at, request_id=request_id
            )
        except msgspec.DecodeError:
            raise InvalidRequest(
                INVALID_RESPONSE, "the token answer is not readable", status=200, request_id=request_id
            ) from None
        except UnreadableToken as exc:
            raise InvalidRequest(INVALID_RESPONSE, str(exc), status=200, request_id=request_id) from None
        self._cache.put(call.key, token)
        log.info(
            "purpose_token_issued purpose=%s audience=%s jti=%s expires_in=%.0f single_use=%s request_id=%s",
            token.purpose,
            token.audience,
            token.jti,
            token.expires_at - sent_at,
            token.single_use,
            request_id,
        )
        return token

    def _retry_delay(self, failure: Unavailable, attempt: int, purpose: str) -> float:
        """Seconds to wait before the next attempt; raises `failure` when there is none."""
        failure.attempts = attempt
        delay = self._retry.delay(failure, attempt)
        if delay is None:
            raise failure
        log.warning(
            "purpose_token_retry purpose=%s attempt=%d error=%s status=%s delay=%.2f request_id=%s",
            purpose,
            attempt,
            failure.error,
            failure.status,
            delay,
            failure.request_id,
        )
        return delay

    def _discovered(self, response: httpx.Response) -> str:
        assert self.issuer is not None
        found = token_endpoint_from(
            self.issuer,
            response.status_code,
            response.headers,
            response.content,
            allow_insecure_http=self._insecure,
        )
        if isinstance(found, PurposeTokenError):
            raise found
        log.info("exchange_discovered issuer=%s token_endpoint=%s", self.issuer, found)
        self._endpoint, self._endpoint_until = found, self._clock() + self._metadata_ttl
        return found

    def _endpoint_or_none(self) -> str | None:
        if self._endpoint is not None and self._clock() < self._endpoint_until:
            return self._endpoint
        return None

    # -- HTTP clients ---------------------------------------------------------------------------------

    def _sync_http(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(timeout=self._timeout, follow_redirects=False)
            return self._http

    def _async_http(self) -> httpx.AsyncClient:
        with self._lock:
            if self._ahttp is None:
                self._ahttp = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
            return self._ahttp

    def close(self) -> None:
        """Close the sync HTTP client this object made (not one passed in)."""
        if self._owns_http and self._http is not None:
            self._http.close()
            self._http = None

    async def aclose(self) -> None:
        """Close the async HTTP client this object made (not one passed in)."""
        if self._owns_ahttp and self._ahttp is not None:
            await self._ahttp.aclose()
            self._ahttp = None

    def __enter__(self) -> PurposeTokenClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> PurposeTokenClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _send(
    request: httpx.Request, request_id: str | None, *, retryable: bool | None = None
) -> Generator[httpx.Request, httpx.Response | None, httpx.Response]:
    """Yield one request to the driver; a transport error it throws in becomes Unavailable."""
    try:
        response = yield request
    except httpx.TransportError as exc:
        raise _unreachable(exc, request_id, retryable=retryable) from None
    assert response is not None
    return response


def _unreachable(
    exc: httpx.TransportError, request_id: str | None, *, retryable: bool | None = None
) -> Unavailable:
    # The exception's type says enough; its text may name hosts and adds nothing an app acts on.
    return Unavailable(
        UNREACHABLE,
        f"no answer from the exchange ({type(exc).__name__})",
        retryable=isinstance(exc, _NOT_SENT) if retryable is None else retryable,
        request_id=request_id,
    )
