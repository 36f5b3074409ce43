"""A route table: method + path prefix -> required purpose, any valid token, or open.

Used by the ASGI middleware and the ambassador. Rules are tried in order and the first match wins, like
a firewall: put specific prefixes before general ones. A request no rule matches is refused (404):
forgetting a route must close it, not open it.

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

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Final

import msgspec

from schemas.base import Base, NonEmptyStr

Prefix = Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern=r"^/")]
Method = Annotated[str, msgspec.Meta(pattern=r"^(\*|[A-Z]+)$")]


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
        # Segment-aware: "/pay" covers "/pay" and "/pay/x", never "/payments".
        if self.prefix.endswith("/"):
            return path.startswith(self.prefix) or path == self.prefix[:-1]
        return path == self.prefix or path.startswith(self.prefix + "/")


class RouteTable:
    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)

    @classmethod
    def single(cls, purpose: str | None) -> RouteTable:
        """Every request needs a token; of `purpose` if given, else any valid one."""
        return cls([Route(prefix="/", purpose=purpose)])

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


def has_dot_segments(path: str) -> bool:
    """True for paths with "." or ".." segments, which an upstream may resolve differently than we match."""
    return any(segment in _DOT_SEGMENTS for segment in path.split("/"))


_DOT_SEGMENTS: Final = frozenset({".", ".."})
