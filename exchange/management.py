"""The management listener: `/metrics` on its own port, served by the `exchange serve` process itself.

It merges the snapshots its workers write to the run directory every second (exchange/rundir.py), so
one scrape sees the whole server however many workers it has; figures are at most a second old. It
runs in a thread of the server's main process and serves nothing else.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from exchange.metrics import CONTENT_TYPE, merge, render
from exchange.rundir import RunDir, alive


def serve_metrics(host: str, port: int, run_dir: RunDir) -> ThreadingHTTPServer:
    """Start listening on host:port in a daemon thread; returns the server (shut it down to stop)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self._answer(404, b"not found\n", "text/plain")
                return
            body = render(merge((s.metrics for s in run_dir.states()), alive=alive))
            self._answer(200, body, CONTENT_TYPE)

        def _answer(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds are not news

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = Server((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="management", daemon=True).start()
    return server
