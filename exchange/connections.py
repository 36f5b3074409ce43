"""What a connection may cost: the HTTP server's side of the slow-client defence (`[limits]`).

A slow client holds a connection open while sending as little as it can. Four bounds keep a thousand of
them from blocking `/token` for everyone else:
- granian speaks HTTP/1.1 only. In "auto" mode it first sniffs for an HTTP/2 preface, and that read has
  no timeout: a connection that sends nothing is held forever (measured: 90 s and counting).
- `header_timeout` (hyper's header read timeout): the whole request head within this many seconds; it
  also closes an idle keep-alive connection, and one that never sends a byte.
- `body_timeout` is the app's (`exchange/app.py`): the whole /token body within it, else 408.
- `max_connections` per worker (granian's backpressure: a connection holds a permit until it closes;
  beyond it, new ones wait in the kernel's `backlog`), and the process's open-file limit raised to fit
  them, so an accept never fails for want of a file descriptor.
- `max_header_bytes` caps each connection's read buffer, so slow connections cost bounded memory.
"""

from __future__ import annotations

import resource
from typing import Any

from schemas.config import Limits

# File descriptors a worker needs besides its client connections: store, logs, JWKS fetches, pipes.
SPARE_FILES = 256


def raise_file_limit(limits: Limits, workers: int) -> tuple[int, str | None]:
    """Raise the soft open-file limit to fit every worker's connections (children inherit it).

    Returns the connections per worker that fit, and a warning when the hard limit forced fewer.
    """
    wanted = limits.max_connections * workers + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    if ceiling >= wanted:
        return limits.max_connections, None
    fitting = max(16, (ceiling - SPARE_FILES) // workers)
    return fitting, (
        f"limits.max_connections lowered to {fitting} per worker: the open-file limit is {hard} "
        f"(raise it, e.g. LimitNOFILE= or ulimit -n, to allow {limits.max_connections})"
    )


def server_options(limits: Limits, max_connections: int) -> dict[str, Any]:
    """granian's keyword arguments for these limits."""
    from granian.constants import HTTPModes
    from granian.http import HTTP1Settings

    return {
        "http": HTTPModes.http1,
        "backlog": limits.backlog,
        "backpressure": max_connections,
        "http1_settings": HTTP1Settings(
            header_read_timeout=int(limits.header_timeout * 1000),  # milliseconds
            keep_alive=True,
            max_buffer_size=limits.max_header_bytes,
        ),
    }
