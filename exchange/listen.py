"""Listening addresses: `host:port` parsed in one place, and a port another process holds refused.

granian binds each worker's socket with SO_REUSEPORT, so a second server on a port already in use
would silently share its traffic. `ensure_free` binds first, without SO_REUSEPORT: the kernel then
refuses while anyone listens there (SO_REUSEADDR only lets a port in TIME_WAIT be reused).
"""

from __future__ import annotations

import errno
import socket


class PortInUse(Exception):
    """Another process listens on this address (one sentence naming it)."""


def split_host_port(value: str, *, what: str = "listen") -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:8080`); ValueError naming `what` otherwise."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be host:port, not {value!r}")
    return host.strip("[]"), int(port)


def ensure_free(host: str, port: int, *, what: str = "port") -> None:
    """Raise PortInUse if another process listens on host:port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortInUse(f"{what} {host}:{port}: cannot resolve {host!r} ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"{what} {host}:{port} is already in use by another process") from None
            raise PortInUse(f"{what} {host}:{port}: cannot listen there ({exc.strerror})") from None
