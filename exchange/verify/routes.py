"""A route table: method + path prefix -> required purpose, any valid token, or open.

Used by the ASGI middleware and the ambassador. Rules are tried in order and the first match wins, like
a firewall: put specific prefixes before general ones. A request no rule matches is refused (404):
forgetting a route must close it, not open it. Two mistakes are refused rather than run:

- a table where a route can never win for some of its methods, because an earlier route of a shorter
  (or the same) prefix takes those requests first (`/` open, then `/admin`: the admin rule would never
  apply); `ValueError` when the table is built;
- HEAD slipping past a GET-only rule: a route for GET is one for HEAD too (servers run the GET handler
  for HEAD);
- a request whose route depends on letter case (`/ADMIN/x` matching the catch-all where `/admin/x`
  matches the admin rule): many upstreams route case-insensitively (Express by default, ASP.NET, IIS,
  anything on a case-insensitive file system), so it is refused (400 `path_case_ambiguous`) rather
  than guessed at, like a non-canonical path.

TOML form (`--routes FILE`):

    [[route]]
    methods = ["POST"]
    prefix = "/payments/"
    purpose = "payments.approve"

    [[route]]
    prefix = "/status"
    open = true
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Final
from urllib.parse import unquote_to_bytes

import msgspec

from schemas.base import Base, NonEmptyStr

Prefix = Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern=r"^/")]
Method = Annotated[str, msgspec.Meta(pattern=r"^(\*|[A-Z]+(-[A-Z]+)*)$")]


class RouteConfig(Base, frozen=True):
    prefix: Prefix
    methods: list[Method] = msgspec.field(default_factory=lambda: ["*"])
    purpose: NonEmptyStr | None = None
    # open = true: no token needed. Neither open nor purpose: any valid token for this audience.
    open: bool = False


class RoutesFile(Base, frozen=True):
    route: list[RouteConfig]


class Route(msgspec.Struct, frozen=True, kw_only=True):
    prefix: str
    methods: frozenset[str] | None = None  # None: any method
    purpose: str | None = None
    open: bool = False

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return _under(path, self.prefix)

    def takes_first(self, later: Route) -> bool:
        """True when this route, placed before `later`, takes some of the requests `later` names:
        its prefix is `later`'s or a shorter one covering it, and their methods overlap."""
        methods = self.methods is None or later.methods is None or not self.methods.isdisjoint(later.methods)
        return methods and _covers(self.prefix, later.prefix)


def _under(path: str, prefix: str) -> bool:
    # Segment-aware: "/pay" covers "/pay" and "/pay/x", never "/payments".
    if prefix.endswith("/"):
        return path.startswith(prefix) or path == prefix[:-1]
    return path == prefix or path.startswith(prefix + "/")


def _covers(outer: str, inner: str) -> bool:
    """Every path under prefix `inner` is under prefix `outer` ("/pay" and "/pay/" name the same paths)."""
    base = inner[:-1] if inner.endswith("/") else inner
    return _under(base, outer) or _under(base + "/", outer)


class RouteTable:
    def __init__(self, routes: Iterable[Route]) -> None:
        # A route for GET is one for HEAD too: servers answer HEAD by running the GET handler (RFC 9110
        # §9.3.2), so a GET-only rule must not let HEAD fall through to a later, open route.
        self.routes: tuple[Route, ...] = tuple(
            msgspec.structs.replace(route, methods=route.methods | {"HEAD"})
            if route.methods is not None and "GET" in route.methods and "HEAD" not in route.methods
            else route
            for route in routes
        )
        # The same table with prefixes case-folded: a request must pick the same route in both.
        self._folded: tuple[Route, ...] = tuple(
            msgspec.structs.replace(route, prefix=_fold(route.prefix)) for route in self.routes
        )
        # Judged case-folded too: "/Admin" open before "/admin" shadows it for a case-blind upstream.
        for index, later in enumerate(self._folded):
            for position, earlier in enumerate(self._folded[:index]):
                if earlier.takes_first(later):
                    first, then = self.routes[position], self.routes[index]
                    raise ValueError(
                        f"route {then.prefix!r} ({_methods(then)}) comes after route {first.prefix!r}"
                        f" ({_methods(first)}), which takes its requests first: put the more specific"
                        " route first"
                    )
        self._cased = any(route.prefix != _fold(route.prefix) for route in self.routes)

    @classmethod
    def single(cls, purpose: str | None) -> RouteTable:
        """Every request needs a token; of `purpose` if given, else any valid one."""
        return cls([Route(prefix="/", purpose=purpose)])

    @classmethod
    def chosen(cls, routes: RouteTable | None, required: str | None, what: str = "purpose") -> RouteTable:
        """A middleware's table: `routes`, or every request needing `required` (not both)."""
        if required is not None and routes is not None:
            raise ValueError(f"pass {what} or routes, not both")
        return routes if routes is not None else cls.single(required)

    @classmethod
    def from_config(cls, configs: Iterable[RouteConfig]) -> RouteTable:
        routes = []
        for config in configs:
            if config.open and config.purpose is not None:
                raise ValueError(f"route {config.prefix!r}: set either open = true or a purpose, not both")
            methods = None if "*" in config.methods else frozenset(config.methods)
            routes.append(
                Route(prefix=config.prefix, methods=methods, purpose=config.purpose, open=config.open)
            )
        return cls(routes)

    @classmethod
    def from_file(cls, path: str | Path) -> RouteTable:
        """Load a TOML route table; errors name the file and the offending key."""
        try:
            document = msgspec.toml.decode(Path(path).read_bytes(), type=RoutesFile)
            return cls.from_config(document.route)
        except (OSError, msgspec.MsgspecError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def match(self, method: str, path: str) -> Route | None:
        for route in self.routes:
            if route.matches(method, path):
                return route
        return None

    def case_problem(self, method: str, path: str, route: Route | None) -> str | None:
        """ "path_case_ambiguous" when `route` (this table's match for the request) is not the route
        the same request matches with letter case ignored (Unicode too: `_fold`), else None."""
        lowered = _fold(path)
        if lowered == path and not self._cased:
            return None
        folded = next((i for i, r in enumerate(self._folded) if r.matches(method, lowered)), None)
        chosen = None if route is None else self.routes.index(route)
        return None if folded == chosen else "path_case_ambiguous"


def _fold(text: str) -> str:
    """Case folded the ways servers ignore case: lower-casing, and upper-casing as .NET's
    OrdinalIgnoreCase does (there U+0131 dotless i is "I" and U+017F long s is "S", which
    lower-casing alone misses)."""
    return text.upper().casefold()


def _methods(route: Route) -> str:
    return "any method" if route.methods is None else ", ".join(sorted(route.methods))


def method_problem(method: str) -> str | None:
    """Why `method` is not a canonical method token (RFC 9110 §9.1: case-sensitive), or None.

    Upper-case letters in dash-joined words only (GET, POST, VERSION-CONTROL): "get" or "Get" is
    refused, never matched as GET, since an upstream may fold case and run the GET handler after a route
    table matched something else.
    """
    return None if _METHOD.match(method) else "non_canonical_method"


def path_problem(raw_path: bytes) -> str | None:
    """Why a request path (as sent, percent-encoded, without the query) is not canonical, or None.

    A path we would match one way and the upstream might resolve another is refused, never "normalised":
    dot segments in any encoding, empty segments (`//`), `;` parameters, backslash, encoded `/` or backslash,
    double percent-encoding, malformed escapes, control characters (NUL included), raw non-ASCII bytes,
    and escapes that decode to overlong or otherwise invalid UTF-8. A trailing `/` is allowed.
    """
    if not raw_path.startswith(b"/") or len(raw_path) > _MAX_PATH:
        return "path_not_absolute"
    if not _RAW_PATH.match(raw_path):
        return "path_bad_character"
    if _BAD_ESCAPES.search(raw_path):
        return "path_encoded_separator"
    try:
        decoded = unquote_to_bytes(raw_path).decode("utf-8")  # strict: overlong forms are invalid UTF-8
    except UnicodeDecodeError:
        return "path_invalid_utf8"
    if not decoded.isprintable():
        return "path_control_character"
    segments = decoded.split("/")[1:]
    if segments and segments[-1] == "":
        segments.pop()  # "/a/" ends in a slash: allowed
    for segment in segments:
        if segment in _DOT_SEGMENTS:
            return "path_dot_segment"
        if segment == "":
            return "path_empty_segment"
    return None


_METHOD: Final = re.compile(r"^[A-Z]+(-[A-Z]+)*$")
_MAX_PATH: Final = 8192
# Visible ASCII without ";" "\\" "#" and "?" (the query is not part of the path), plus %XX escapes.
_RAW_PATH: Final = re.compile(rb"^(?:[!$&'()*+,\-./0-9:=@A-Z\[\]_a-z~]|%[0-9A-Fa-f]{2})*$")
# Encoded "/" or "\\", encoded ";", and "%25" followed by hex (a second round of decoding would change it).
_BAD_ESCAPES: Final = re.compile(rb"%(?:2[Ff]|5[Cc]|3[Bb]|25[0-9A-Fa-f]{2}|[01][0-9A-Fa-f]|7[Ff])")


_DOT_SEGMENTS: Final = frozenset({".", ".."})
