"""Caddy for tests: Debian's package, one process in the foreground, on loopback only.

`binary()` finds caddy, installing Debian's package with apt-get when it is missing and we are root
(CI runs as root on a Debian machine). The package's postinst starts a `caddy` service on :80 where
systemd runs; we stop and disable it, and run our own with an explicit Caddyfile: global options that
turn off the admin endpoint and automatic HTTPS and bind every site to loopback, then the site block.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from harness.docs import config_block


def binary() -> str | None:
    """caddy's path, or None when it is missing and cannot be installed here."""
    found = shutil.which("caddy")
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "caddy"],
        ):
            subprocess.run(command, env=env, capture_output=True, timeout=600, check=False)
        if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
            # Where systemd runs, the package started its own caddy on :80: not ours to leave running.
            subprocess.run(["systemctl", "disable", "--now", "caddy"], capture_output=True, check=False)
        found = shutil.which("caddy")
    return found


def write_config(workdir: Path, site: str) -> list[str]:
    """caddy's argv for `site` (Caddyfile text) in `workdir`: no admin API, no HTTPS, loopback only."""
    conf = workdir / "Caddyfile"
    options = "\tadmin off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n\tlog {\n\t\tlevel ERROR\n\t}\n"
    conf.write_text("{\n" + options + "}\n\n" + site)
    return ["run", "--config", str(conf), "--adapter", "caddyfile"]


def env(workdir: Path) -> dict[str, str]:
    """caddy's environment: its data and config folders (certificates, autosave) inside `workdir`."""
    return {**os.environ, "XDG_DATA_HOME": str(workdir / "data"), "XDG_CONFIG_HOME": str(workdir / "config")}


def docs_block(docs: Path, *, listen: int, upstream: int, gateway: int) -> str:
    """The Caddy gateway config of docs/VERIFY.md, exactly as written, with its ports substituted."""
    return config_block(
        docs,
        "### Caddy (`forward_auth`)",
        "caddy",
        {
            ":8000 {": f":{listen} {{",
            "127.0.0.1:8090": f"127.0.0.1:{upstream}",
            "127.0.0.1:8082": f"127.0.0.1:{gateway}",
        },
    )
