"""RFC 8414 discovery: from the exchange's issuer URL to its token endpoint.

The metadata is trusted only if its `issuer` is exactly the one asked for (RFC 8414 §3.3: otherwise
whoever answers at that URL could point the app, and its credentials, at another server), and the
token endpoint must be https (plain http only to a loopback host). The answer is kept for
`DEFAULT_METADATA_TTL` seconds by the client; endpoints move rarely.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import msgspec

from exchange.client.errors import INVALID_RESPONSE, InvalidRequest, PurposeTokenError, error_from_answer
from exchange.verify.jwks import require_secure_uri

WELL_KNOWN: Final = "/.well-known/oauth-authorization-server"
DEFAULT_METADATA_TTL: Final = 3600.0


class _Metadata(msgspec.Struct):
    # Lenient: metadata carries many members (RFC 8414 §2); only these two matter here.
    issuer: str
    token_endpoint: str


_METADATA: Final = msgspec.json.Decoder(_Metadata)


def metadata_url(issuer: str) -> str:
    """RFC 8414 §3.1: the well-known path goes between the host and the issuer's own path."""
    parts = urlsplit(issuer)
    if parts.query or parts.fragment or not parts.hostname:
        raise ValueError(f"an issuer is a URL without query or fragment: {issuer!r}")
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN + path, "", ""))


def check_endpoint(url: str, *, allow_insecure_http: bool) -> str:
    """The token endpoint, if it is safe to send credentials and identity tokens to; else ValueError."""
    require_secure_uri(url, allow_insecure_http=allow_insecure_http, what="token endpoint")
    return url


def token_endpoint_from(
    issuer: str, status: int, headers: Mapping[str, str], body: bytes, *, allow_insecure_http: bool
) -> str | PurposeTokenError:
    """The token endpoint named by a metadata answer, or the error to raise."""
    if status != 200:
        return error_from_answer(status, headers, body, request_id=None)
    try:
        metadata = _METADATA.decode(body)
    except msgspec.DecodeError:
        return InvalidRequest(INVALID_RESPONSE, "the authorization server metadata is not readable")
    if metadata.issuer != issuer:
        return InvalidRequest(INVALID_RESPONSE, "the metadata names another issuer (RFC 8414 §3.3)")
    try:
        return check_endpoint(metadata.token_endpoint, allow_insecure_http=allow_insecure_http)
    except ValueError as exc:
        return InvalidRequest(INVALID_RESPONSE, str(exc))
