"""A tiny upstream service for the ambassador tests, run as its own process under uvicorn.

python -m uvicorn tests.verify.upstream_app:app --port N
"""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if path.startswith("/stream"):
        # Chunks with pauses: a proxy that buffers would deliver them all at once at the end.
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        for n in range(3):
            await send({"type": "http.response.body", "body": f"chunk{n}\n".encode(), "more_body": True})
            await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if path.startswith("/slow"):
        await asyncio.sleep(3)
    if path.startswith("/set-cookie"):
        headers = [(b"content-type", b"text/plain"), (b"set-cookie", b"session=alice-secret; Path=/")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"cookie set"})
        return
    if path.startswith("/gzip"):
        payload = gzip.compress(b"compressed body" * 10)
        headers = [(b"content-type", b"text/plain"), (b"content-encoding", b"gzip")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        return
    echo = {
        "method": scope["method"],
        "path": path,
        "raw_path": (scope.get("raw_path") or b"").decode("latin-1"),
        "query": scope["query_string"].decode("latin-1"),
        "headers": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"]],
        "body": body.decode("latin-1"),
    }
    payload = json.dumps(echo).encode()
    status = 201 if path.startswith("/created") else 200
    headers = [
        (b"content-type", b"application/json"),
        (b"x-upstream", b"yes"),
        (b"connection", b"keep-alive"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
