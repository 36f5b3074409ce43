"""The peer: panva oidc-provider (npm), answering client_credentials with ES256 JWT access tokens.

`bench/peer/` holds what is committed (package.json with the exact version, the lock file, the
server script); `bench/.peer/` (git-ignored) is where it is installed, with `npm ci`, the first
time or whenever the lock changes. The peer runs under the same pinning and the same load generator
as the service: one Node process on SERVER_CPUS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import subprocess
from pathlib import Path

from harness.procs import SERVER_CPUS, Process, free_port, pin

SOURCE = Path(__file__).resolve().parents[1] / "peer"
HOME = Path(__file__).resolve().parents[1] / ".peer"
FILES = ("package.json", "package-lock.json", "server.mjs")
REQUEST = "grant_type=client_credentials&scope=payments.approve&resource=https%3A%2F%2Fpayments.internal"


class PeerUnavailable(RuntimeError):
    """The peer could not be installed (no node/npm, or the npm registry did not answer)."""


def version() -> str:
    return str(json.loads((SOURCE / "package.json").read_text())["dependencies"]["oidc-provider"])


def install() -> Path:
    """bench/.peer/ with node_modules matching the committed lock; raises PeerUnavailable."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise PeerUnavailable("node and npm are needed for the peer (Debian: apt-get install -y nodejs npm)")
    stamp = hashlib.sha256(b"".join((SOURCE / f).read_bytes() for f in FILES)).hexdigest()
    marker = HOME / ".installed"
    if marker.exists() and marker.read_text() == stamp and (HOME / "node_modules" / "oidc-provider").is_dir():
        return HOME
    HOME.mkdir(exist_ok=True)
    for f in FILES:
        shutil.copyfile(SOURCE / f, HOME / f)
    try:
        out = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel", "error"],
            cwd=HOME,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        raise PeerUnavailable("npm ci timed out (registry unreachable?)") from None
    if out.returncode != 0:
        raise PeerUnavailable(f"npm ci failed: {out.stderr.strip()[-500:]}")
    marker.write_text(stamp)
    return HOME


class Peer:
    """A running oidc-provider; `headers()` and REQUEST make one client_credentials request."""

    def __init__(self, cpus: str = SERVER_CPUS) -> None:
        home = install()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._secret = secrets.token_urlsafe(24)
        argv = [*pin(cpus), "node", str(home / "server.mjs"), str(self.port)]
        self.server = Process("oidc-provider", argv, env={"PEER_CLIENT_SECRET": self._secret}, cwd=home)
        self.server.wait_http(f"{self.url}/.well-known/openid-configuration")

    def headers(self) -> dict[str, str]:
        basic = base64.b64encode(f"bench:{self._secret}".encode()).decode()
        return {"Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Basic {basic}"}

    def close(self) -> None:
        self.server.stop()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
