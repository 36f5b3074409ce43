"""What crosses a verifying proxy: the header rules shared by the ambassador and the gateway.

One place decides which client headers reach the service and which we set, so the two placements
cannot drift apart:

- Identity headers (`X-Purpose-*`) are ours alone. Client values are dropped in every spelling: any
  case, and `_` for `-` (WSGI/CGI servers and some proxies fold `X_Purpose_Sub` into the same variable
  as `X-Purpose-Sub`); in fact every client header with `_` in its name is dropped, as nginx does.
- `Forwarded`, `X-Forwarded-*` and `X-Real-IP` are set by us from the connection we saw; the other
  client-address and scheme headers frameworks and CDNs read (`True-Client-IP`, `X-Client-IP`,
  `CF-Connecting-IP`, `X-Forwarded-Ssl`, `Front-End-Https`, ...) are dropped. A client's
  values are kept (and extended) only when the peer is a configured trusted proxy.
- Method-override headers (`X-HTTP-Method-Override` and kin) and URL-rewrite headers (`X-Original-URL`,
  `X-Rewrite-URL`) are dropped: the route table decided on the request's own method and path.
- `Connection` may name only hop-by-hop options (close, keep-alive, upgrade, te): a client naming an
  end-to-end or identity header there ("drop X-Forwarded-For on the next hop") is refused; so is a
  request with two Host fields, or none on HTTP/1.1 (which host it is for would be a guess).
- Identity values are percent-encoded as RFC 3986 `pchar` (UTF-8): `%` itself is always encoded, so
  the encoding is injective (two subjects never share one header value) and no byte can split a header.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from typing import Final
from urllib.parse import quote

import msgspec

from exchange.verify.claims import VerifiedClaims
from exchange.verify.txn import TxnToken

Headers = list[tuple[bytes, bytes]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

IDENTITY_PREFIX: Final = b"x-purpose-"
IDENTITY_HEADERS: Final = (b"x-purpose-sub", b"x-purpose-scope", b"x-purpose-claims", b"x-purpose-txn-claims")
#: RFC 9110 §7.6.1 hop-by-hop fields, plus Host and the framing headers (the proxy frames the body).
HOP_BY_HOP: Final = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection",
        b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length",
    }
)  # fmt: skip
FORWARDING: Final = frozenset(
    {
        b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port",
        b"x-forwarded-prefix", b"x-forwarded-server", b"x-forwarded-method", b"x-forwarded-uri",
        b"x-real-ip", b"x-original-method", b"x-original-uri",
        # The other spellings of "the client's address" and "the scheme it used" that frameworks and CDNs
        # read (an IP allow-list or "is this https" decided on them would be the client's to set).
        b"x-client-ip", b"true-client-ip", b"client-ip", b"x-cluster-client-ip", b"cf-connecting-ip",
        b"fastly-client-ip", b"x-originating-ip", b"x-remote-ip", b"x-remote-addr", b"x-proxyuser-ip",
        b"x-original-forwarded-for", b"x-forwarded", b"forwarded-for", b"x-forwarded-ssl",
        b"x-forwarded-scheme", b"x-url-scheme", b"front-end-https", b"x-forwarded-path",
    }
)  # fmt: skip
OVERRIDES: Final = frozenset(
    {b"x-http-method-override", b"x-http-method", b"x-method-override", b"x-original-url", b"x-rewrite-url"}
)
_ENCODER: Final = msgspec.json.Encoder()
_CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade", b"te", b""})
# RFC 3986 pchar without pct-encoded (sub-delims, ":" and "@"), plus "/"; "%" is never safe.
_PCHAR_SAFE: Final = "!$&'()*+,;=:@/"


def parse_networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """CIDR blocks or single addresses of trusted proxies; ValueError naming the bad one."""
    networks = []
    for spec in specs:
        try:
            networks.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR block: {spec!r}") from None
    return tuple(networks)


def connection_problem(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """Why the request's Connection header is refused (it names more than hop-by-hop options), or None."""
    for name, value in headers:
        if name.lower() == b"connection":
            for token in value.split(b","):
                if token.strip().lower() not in _CONNECTION_OPTIONS:
                    return "connection_names_header"
    return None


def host_problem(headers: Sequence[tuple[bytes, bytes]], http_version: str) -> str | None:
    """Why the request's Host is ambiguous, or None: two Host fields (an outer proxy may route on the
    first while we forward the last), or none on HTTP/1.1 (RFC 9112 §3.2: both are answered 400)."""
    hosts = [value for name, value in headers if name.lower() == b"host"]
    if len(hosts) > 1:
        return "two_hosts"
    # granian hands a missing Host over as an empty one (and HTTP/1.0 as version "1").
    if http_version == "1.1" and not (hosts and hosts[0]):
        return "no_host"
    return None


def is_ours(name: bytes) -> bool:
    """True for a client header we drop whatever its value: identity, forwarding, overrides, `_` names."""
    lowered = name.lower()
    return (
        b"_" in lowered
        or lowered.startswith(IDENTITY_PREFIX)
        or lowered in FORWARDING
        or lowered in OVERRIDES
        or lowered in HOP_BY_HOP
    )


def forged_header(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """Why a forward-auth check is refused for the original request's headers, or None.

    The gateway cannot drop a client's header on the way to the upstream (the proxy forwards it), so
    it refuses the request instead when one would reach the service as something we vouch for: an
    identity header (`x-purpose-*`, any case; the proxy's copy of ours may not replace it, e.g. on an
    open route where we send none), any name with `_` (WSGI/CGI fold `X_Purpose_Sub` into
    `HTTP_X_PURPOSE_SUB`, as they fold `X_Forwarded_For`; Go proxies pass such names through), and
    method-override or URL-rewrite headers (the route was chosen on the request's own method and path).
    Traefik and Caddy send the check every header of the original request, nginx all but `_` names,
    Envoy those its `allowed_headers` name (docs/VERIFY.md lists them).
    """
    for name, _ in headers:
        lowered = name.lower()
        if b"_" in lowered:
            return "underscore_header"
        if lowered.startswith(IDENTITY_PREFIX):
            return "client_identity_header"
        if lowered in OVERRIDES:
            return "override_header"
    return None


def identity_headers(claims: VerifiedClaims) -> Headers:
    """The identity headers for verified claims (sub, purpose, and all claims as ASCII JSON)."""
    # The wire names, absent claims left out (the Struct's own encoding); a header value must not carry
    # raw UTF-8, so claims with non-ASCII text go through json's ensure_ascii (JSON escapes controls).
    encoded = _ENCODER.encode(claims)
    if not encoded.isascii():
        encoded = json.dumps(claims.to_dict(), ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return [
        (b"x-purpose-sub", encode_identity(claims.sub)),
        (b"x-purpose-scope", encode_identity(claims.purpose)),
        (b"x-purpose-claims", encoded),
    ]


def txn_identity_headers(txn: TxnToken) -> Headers:
    """What a verified Txn-Token says (txn, req_wl, tctx, rctx, ...), as ASCII JSON. The `Txn-Token`
    header itself goes on to the service untouched (draft-ietf-oauth-transaction-tokens-10 §12.2)."""
    encoded = json.dumps(txn.claims.to_dict(), ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return [(b"x-purpose-txn-claims", encoded)]


def encode_identity(value: str) -> bytes:
    """Injective, header-safe: UTF-8 percent-encoding of everything outside RFC 3986 pchar."""
    return quote(value, safe=_PCHAR_SAFE, errors="surrogatepass").encode("ascii")


def upstream_headers(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    peer: str | None,
    scheme: str,
    trusted: Sequence[Network] = (),
    claims: VerifiedClaims | None = None,
    txn: TxnToken | None = None,
) -> Headers:
    """The request headers the service gets: the client's minus ours, then ours (forwarding, identity)."""
    out: Headers = []
    host = b""
    client_for: list[bytes] = []
    client_forwarded: list[bytes] = []
    client_proto = client_host = b""
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"host":
            host = value
        if not is_ours(lowered):
            out.append((lowered, value))
            continue
        if lowered == b"x-forwarded-for":
            client_for.append(value)
        elif lowered == b"forwarded":
            client_forwarded.append(value)
        elif lowered == b"x-forwarded-proto":
            client_proto = value
        elif lowered == b"x-forwarded-host":
            client_host = value
    peer_bytes = (peer or "unknown").encode("ascii", "replace")
    if peer is not None and _is_trusted(peer, trusted):
        chain = b", ".join([*client_for, peer_bytes])
        # The client as the trusted proxy saw it: the last hop it appended.
        real_ip = client_for[-1].rsplit(b",", 1)[-1].strip() if client_for else peer_bytes
        proto = client_proto or scheme.encode("ascii")
        forwarded_host = client_host or host
        prior = client_forwarded
    else:
        chain, real_ip, proto, forwarded_host, prior = (
            peer_bytes,
            peer_bytes,
            scheme.encode("ascii"),
            host,
            [],
        )
    out.append((b"x-forwarded-for", chain))
    out.append((b"x-real-ip", real_ip))
    out.append((b"x-forwarded-proto", proto))
    if forwarded_host:
        out.append((b"x-forwarded-host", forwarded_host))
    element = b'for="%s";proto=%s' % (_forwarded_node(peer_bytes), scheme.encode("ascii"))
    if host and b'"' not in host and b"\\" not in host:
        element += b';host="%s"' % host
    out.append((b"forwarded", b", ".join([*prior, element])))
    if claims is not None:
        out.extend(identity_headers(claims))
    if txn is not None:
        out.extend(txn_identity_headers(txn))
    return out


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The upstream's response headers minus hop-by-hop ones and those its Connection header names."""
    raw = list(raw)
    named = {
        token.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return [
        (name, value) for name, value in raw if name.lower() not in HOP_BY_HOP and name.lower() not in named
    ]


def _is_trusted(peer: str, trusted: Sequence[Network]) -> bool:
    if not trusted:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in trusted)


def _forwarded_node(peer: bytes) -> bytes:
    # RFC 7239 §6: an IPv6 node is bracketed (and the value quoted, which the caller does).
    return b"[%s]" % peer if b":" in peer else peer
