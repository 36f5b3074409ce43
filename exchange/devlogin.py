"""The dev identity provider's sign-in pages: an OpenID Connect authorization code flow (with PKCE) a
person can click through, so example apps can sign users in and step up (RFC 9470). DEVELOPMENT ONLY.

Served by the exchange itself, at the path of `[dev_issuer].issuer` (`/dev-idp` in exchange.toml), and
only when `[dev_issuer]` is configured, the same switch that makes the exchange trust its tokens:

    GET  {path}/authorize   the sign-in form: any user name, no password, a "second factor" checkbox
    POST {path}/authorize   → 303 to redirect_uri with ?code=...&state=...&iss=...
    POST {path}/token       code + PKCE verifier → {"id_token": ...} (no access token: the app only
                            needs an identity token to exchange)

Every sign-in is a fresh login (auth_time = now), so any `max_age` is met; with the box ticked, `amr`
is ["pwd", "mfa"] and `acr` the first of the requested `acr_values`. The ID token names the app in
`azp`, as a real provider's does. The code is the sign-in, encrypted and authenticated under a key
derived from the dev key file (so every worker can read it), redeemable once (the store's replay
table) within 60 seconds, and only with the PKCE verifier (RFC 7636 S256) and the same redirect_uri.
Redirect URIs must point to a loopback host: no client registry exists here, so nothing else is safe.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import html
import os
import re
import secrets
import time
from collections.abc import Callable
from typing import Annotated, Any, Final
from urllib.parse import urlencode, urlsplit

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from litestar import Litestar, Request, Response, Router, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body

from exchange import devidp
from exchange.config import is_loopback_host
from exchange.store.base import Store
from exchange.verify.compact import b64url_decode, b64url_encode
from schemas.config import DevIssuer

CODE_TTL: Final = 60
ID_TOKEN_TTL: Final = 600
_USER: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_CLIENT: Final = re.compile(r"^[\x21-\x7e]{1,256}$")
_CHALLENGE: Final = re.compile(r"^[A-Za-z0-9_-]{43,128}$")
_REDIRECT: Final = re.compile(
    r"https?://(?P<host>localhost|[0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[::1\])(?::[0-9]{1,5})?"
    r"(?:[/?][!$&'()*+,\-./0-9:;=?@A-Z_a-z~%]*)?"
)
_ACR: Final = re.compile(r"^[\x21-\x7e]{1,256}( [\x21-\x7e]{1,256}){0,7}$")
_PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]


class _Grant(msgspec.Struct, forbid_unknown_fields=True):
    """What a code stands for (inside its ciphertext)."""

    sub: str
    amr: list[str]
    acr: str | None
    nonce: str | None
    client_id: str
    redirect_uri: str
    challenge: str
    exp: int
    jti: str


class _Authorize(msgspec.Struct, forbid_unknown_fields=False):
    """The authorization request's parameters this provider understands (others are ignored)."""

    client_id: str
    redirect_uri: str
    state: str
    code_challenge: str
    response_type: str = "code"
    code_challenge_method: str = "plain"
    nonce: str | None = None
    acr_values: str | None = None
    max_age: str | None = None


class BadRequest(ValueError):
    """Shown to the person as the page's text (never redirected: the redirect_uri may be the problem)."""


def _loopback(url: str) -> bool:
    """A redirect URI that every URL parser reads as this machine's.

    Only one spelling: scheme, a loopback host (no user info), an optional port, then a path and query
    of visible ASCII without a backslash or fragment. Python's parser and a browser's (WHATWG) disagree
    on anything looser: `http://evil.example\\@127.0.0.1/` is 127.0.0.1 to urlsplit and evil.example to
    a browser, which would carry the code there.
    """
    match = _REDIRECT.fullmatch(url)
    if match is None:
        return False
    return is_loopback_host(match.group("host"))


def _parse(params: dict[str, str]) -> _Authorize:
    try:
        request = msgspec.convert(params, _Authorize)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"the sign-in request is incomplete: {exc}") from None
    if request.response_type != "code":
        raise BadRequest("only response_type=code is supported")
    if not _CLIENT.match(request.client_id) or not _loopback(request.redirect_uri):
        raise BadRequest("the dev identity provider only signs in to apps on a loopback address")
    if request.code_challenge_method != "S256" or not _CHALLENGE.match(request.code_challenge):
        raise BadRequest("PKCE with code_challenge_method=S256 is required (RFC 7636)")
    if len(request.state) > 512 or (request.nonce is not None and len(request.nonce) > 256):
        raise BadRequest("state or nonce is too long")
    if request.acr_values is not None and not _ACR.match(request.acr_values):
        raise BadRequest("acr_values is malformed")
    if request.max_age is not None and not request.max_age.isdigit():
        raise BadRequest("max_age must be a number of seconds")
    return request


def _cipher(dev: DevIssuer) -> AESGCM:
    key = devidp.load_or_create_key(dev.key_file)
    secret = b64url_decode(str(key.as_dict(private=True)["d"]).encode())
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"dev-idp authorization code")
    return AESGCM(derived.derive(secret))


def _seal(dev: DevIssuer, grant: _Grant) -> str:
    nonce = os.urandom(12)
    return b64url_encode(nonce + _cipher(dev).encrypt(nonce, msgspec.json.encode(grant), b"code")).decode()


def _open(dev: DevIssuer, code: str) -> _Grant | None:
    try:
        raw = b64url_decode(code.encode("ascii"))
        plain = _cipher(dev).decrypt(raw[:12], raw[12:], b"code")
        return msgspec.json.decode(plain, type=_Grant)
    except (ValueError, binascii.Error, InvalidTag, msgspec.DecodeError):
        return None


def _page(title: str, body: str, status: int = 200) -> Response[str]:
    text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:30rem;margin:3rem auto;color:#222}}
.dev{{background:#fff3cd;border:1px solid #e0c060;padding:.6rem;border-radius:.3rem}}
.ask{{background:#e8f0fe;border:1px solid #9ab;padding:.6rem;border-radius:.3rem}}
label{{display:block;margin:.8rem 0}}button{{font-size:1rem;padding:.4rem 1.2rem}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p class="dev">Development identity provider: anyone can sign in as anyone. Never use it in production.</p>
{body}</body></html>"""
    return Response(text, status_code=status, media_type="text/html", headers=_PAGE_HEADERS)


def _form(request: _Authorize) -> str:
    hidden = "".join(
        f'<input type="hidden" name="{name}" value="{html.escape(value)}">'
        for name, value in msgspec.structs.asdict(request).items()
        if value is not None
    )
    asked = ""
    if request.acr_values or request.max_age is not None:
        asked = (
            f'<p class="ask"><b>{html.escape(request.client_id)}</b> asks you to sign in again'
            + (" and confirm with your second factor." if request.acr_values else ".")
            + "</p>"
        )
    return f"""{asked}
<form method="post">{hidden}
<label>User name <input name="username" value="alice" autocomplete="username" required></label>
<label><input type="checkbox" name="mfa" value="1"> Confirm with my second factor
(simulated: ticking the box counts as the second factor)</label>
<button type="submit">Sign in</button></form>"""


def routes(dev: DevIssuer, store_of: Callable[[Litestar], Store]) -> Router:
    """The sign-in pages for `dev`, at its issuer's path; `store_of(app)` is the running app's store."""
    path = urlsplit(dev.issuer).path.rstrip("/") or "/"

    @get("/authorize", sync_to_thread=False)
    def authorize_form(request: Request[Any, Any, Any]) -> Response[str]:
        try:
            parsed = _parse(dict(request.query_params))
        except BadRequest as exc:
            return _page("Cannot sign in", f"<p>{html.escape(str(exc))}</p>", status=400)
        return _page("Sign in", _form(parsed))

    @post("/authorize", sync_to_thread=False)
    def authorize_submit(data: Form) -> Response[str]:
        try:
            parsed = _parse({k: v for k, v in data.items() if k not in ("username", "mfa")})
        except BadRequest as exc:
            return _page("Cannot sign in", f"<p>{html.escape(str(exc))}</p>", status=400)
        user = data.get("username", "").strip().lower()
        if not _USER.match(user):
            return _page(
                "Sign in", "<p>Use a simple user name (letters, digits, . _ -).</p>" + _form(parsed), 400
            )
        second = data.get("mfa") == "1"
        # The level asked for is the level claimed: this provider simulates a successful step-up.
        acr = parsed.acr_values.split(" ")[0] if second and parsed.acr_values else None
        grant = _Grant(
            sub=user,
            amr=["pwd", "mfa"] if second else ["pwd"],
            acr=acr,
            nonce=parsed.nonce,
            client_id=parsed.client_id,
            redirect_uri=parsed.redirect_uri,
            challenge=parsed.code_challenge,
            exp=int(time.time()) + CODE_TTL,
            jti=secrets.token_urlsafe(16),
        )
        query = urlencode({"code": _seal(dev, grant), "state": parsed.state, "iss": dev.issuer})
        separator = "&" if "?" in parsed.redirect_uri else "?"
        return Response(
            "",
            status_code=303,
            headers={"Location": f"{parsed.redirect_uri}{separator}{query}", **_PAGE_HEADERS},
        )

    @post("/token")
    async def token(request: Request[Any, Any, Any], data: Form) -> Response[bytes]:
        grant = _open(dev, data.get("code", "")) if data.get("grant_type") == "authorization_code" else None
        verifier = data.get("code_verifier", "")
        if (
            grant is None
            or grant.exp < time.time()
            or grant.client_id != data.get("client_id")
            or grant.redirect_uri != data.get("redirect_uri")
            or not hmac.compare_digest(
                b64url_encode(hashlib.sha256(verifier.encode()).digest()).decode(), grant.challenge
            )
            or not await store_of(request.app).consume_jti("dev-idp-code", grant.jti, float(grant.exp) + 60)
        ):
            body = b'{"error":"invalid_grant","error_description":"the code is invalid, expired or used"}'
            return Response(body, status_code=400, media_type="application/json", headers=_PAGE_HEADERS)
        extra: dict[str, Any] = {"azp": grant.client_id}
        if grant.nonce is not None:
            extra["nonce"] = grant.nonce
        id_token = devidp.mint(
            dev, sub=grant.sub, ttl=ID_TOKEN_TTL, amr=grant.amr, acr=grant.acr, extra=extra
        )
        answer = {"id_token": id_token, "token_type": "Bearer", "expires_in": ID_TOKEN_TTL}
        return Response(
            msgspec.json.encode(answer), status_code=200, media_type="application/json", headers=_PAGE_HEADERS
        )

    return Router(path=path, route_handlers=[authorize_form, authorize_submit, token])
