"""nginx for benches and tests: Debian's package, one worker in the foreground, on loopback only.

`binary()` finds nginx, installing Debian's package with apt-get when it is missing and we are root
(CI runs as root on a Debian machine). `write_config` wraps an `http { ... }` body (server blocks,
upstreams) into a complete nginx.conf whose pid file, logs and temp paths all stay in `workdir`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from harness.docs import config_block

_SBIN = "/usr/sbin/nginx"


def _found() -> str | None:
    return shutil.which("nginx") or (_SBIN if os.path.exists(_SBIN) else None)


def binary() -> str | None:
    """nginx's path, or None when it is missing and cannot be installed here."""
    found = _found()
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx"],
        ):
            subprocess.run(command, env=env, capture_output=True, timeout=600, check=False)
        found = _found()
    return found


def write_config(workdir: Path, http_body: str) -> Path:
    """A complete nginx.conf in `workdir` around `http_body`: foreground, one process, quiet."""
    temp = workdir / "nginx-tmp"
    (workdir / "nginx-logs").mkdir(exist_ok=True)
    temp.mkdir(exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(
        "daemon off;\nmaster_process off;\nworker_processes 1;\n"
        f"pid {workdir}/nginx.pid;\nerror_log {workdir}/nginx-logs/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n  access_log off;\n"
        f"  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;\n"
        f"  fastcgi_temp_path {temp}/fastcgi; uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;\n"
        f"{http_body}\n}}\n"
    )
    return conf


def argv(nginx: str, conf: Path) -> list[str]:
    return [nginx, "-p", str(conf.parent), "-c", str(conf)]


def docs_gateway_block(docs: Path, *, listen: int, upstream: int, gateway: int) -> str:
    """The nginx gateway config of docs/VERIFY.md, exactly as written, with its ports substituted."""
    return config_block(
        docs,
        "### nginx (`auth_request`)",
        "nginx",
        {
            "127.0.0.1:8000": f"127.0.0.1:{listen}",
            "127.0.0.1:8090": f"127.0.0.1:{upstream}",
            "127.0.0.1:8082": f"127.0.0.1:{gateway}",
        },
    )
