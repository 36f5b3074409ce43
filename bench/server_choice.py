"""Why the service runs on granian: a litestar "hello world" under granian and under uvicorn, one worker
each, in the same run, same load generator, same pinning (server on CPU 0, generator on CPU 1).

uvicorn is measured as the venv has it (pure-Python h11 + asyncio, which is what `pip install uvicorn`
gives) and, when uvloop and httptools can be imported (in the venv, or from `--extras DIR`, a folder
made with `pip install --target DIR uvloop httptools` so the service's own venv is left alone), as
`uvicorn[standard]` (httptools + uvloop), its fastest configuration. granian runs with the defaults
`exchange serve` uses.

Usage:
    .venv/bin/python bench/server_choice.py [--duration 10] [--concurrency 64] [--rounds 2]
        [--generator auto|wrk|python] [--extras /tmp/uvstd] [--append-results]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from litestar import Litestar, Request, Response, asgi, get, post

HERE = Path(__file__).resolve().parent
SECTION = "## ASGI server choice"
SECTION_POST = "## HTTP floor under POST /token (granian: litestar vs bare ASGI)"


def create_hello_app() -> Litestar:
    """The ASGI app under test: one route, a fixed JSON body (the framework floor)."""

    @get("/")
    async def hello() -> Response[bytes]:
        return Response(b'{"hello":"world"}', media_type="application/json")

    return Litestar(route_handlers=[hello], openapi_config=None, debug=False)


# --post: the HTTP floor under POST /token. A form body the size of an exchange request is read and a
# token-sized JSON answer sent with the same headers, through litestar and through a bare ASGI callable.
_ANSWER = (
    b'{"access_token":"'
    + b"x" * 620
    + b'","issued_token_type":"urn:ietf:params:oauth:token-type:access_token",'
    b'"token_type":"Bearer","expires_in":60,"scope":"payments.approve"}'
)
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
POST_BODY = (
    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token="
    + "x" * 900
    + "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token&scope=payments.approve"
    "&client_id=bank-web"
)


def create_post_app() -> Litestar:
    """litestar, POST: read the body, answer a fixed token-sized JSON (what /token costs without the work)."""

    @post("/token", status_code=200)
    async def token(request: Request[Any, Any, Any]) -> Response[bytes]:
        body = await request.body()
        if not body or request.headers.get("content-type", "") != "application/x-www-form-urlencoded":
            return Response(b"{}", status_code=400, media_type="application/json")
        return Response(_ANSWER, media_type="application/json", headers=_NO_STORE)

    return Litestar(route_handlers=[token], openapi_config=None, debug=False)


def create_raw_post_app() -> Any:
    """The same answer from a bare ASGI callable: no framework at all."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_ANSWER)).encode()),
        (b"cache-control", b"no-store"),
        (b"pragma", b"no-cache"),
    ]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": _ANSWER})

    return app


def create_asgi_route_post_app() -> Litestar:
    """litestar routing, but /token as an `@asgi` route: no Request, signature model or Response objects."""
    raw = create_raw_post_app()

    @asgi("/token")
    async def token(scope: Any, receive: Any, send: Any) -> None:
        await raw(scope, receive, send)

    return Litestar(route_handlers=[token], openapi_config=None, debug=False)


def _granian(port: int, target: str) -> list[str]:
    """One granian worker serving the ASGI factory `target` on loopback."""
    return [
        str(Path(sys.executable).parent / "granian"),
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
        "--factory",
        target,
    ]


def _post_servers(port: int) -> list[tuple[str, list[str], dict[str, str]]]:
    env = {"PYTHONPATH": str(HERE)}
    return [
        ("granian + litestar POST", _granian(port, "server_choice:create_post_app"), env),
        (
            "granian + litestar @asgi route POST",
            _granian(port, "server_choice:create_asgi_route_post_app"),
            env,
        ),
        ("granian + bare ASGI POST", _granian(port, "server_choice:create_raw_post_app"), env),
    ]


def _servers(port: int, extras: str | None) -> list[tuple[str, list[str], dict[str, str]]]:
    bin_dir = Path(sys.executable).parent
    target = "server_choice:create_hello_app"
    servers: list[tuple[str, list[str], dict[str, str]]] = [
        ("granian", _granian(port, target), {}),
        (
            "uvicorn (h11, asyncio)",
            [
                str(bin_dir / "uvicorn"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--no-access-log",
                "--log-level",
                "warning",
                "--http",
                "h11",
                "--loop",
                "asyncio",
                "--factory",
                target,
            ],
            {},
        ),
    ]
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(HERE), extras) if p)}
    if _importable(["uvloop", "httptools"], extras):
        servers.append(
            (
                "uvicorn (httptools, uvloop)",
                [
                    str(bin_dir / "uvicorn"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                    "--no-access-log",
                    "--log-level",
                    "warning",
                    "--http",
                    "httptools",
                    "--loop",
                    "uvloop",
                    "--factory",
                    target,
                ],
                {},
            )
        )
    return [(name, argv, env) for name, argv, _ in servers]


def _importable(modules: list[str], extras: str | None) -> bool:
    import subprocess

    env = {**os.environ, "PYTHONPATH": extras or ""}
    code = "import " + ", ".join(modules)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0


def main() -> int:
    from exchange_bench import (
        LOAD_CPU,
        SERVER_CPU,
        _append_section,
        _generator_note,
        _pct,
        free_port,
        has_taskset,
        pick_generator,
        pin,
        run_load,
        start,
        stop,
        wait_http,
    )

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternate the servers this many times (median)"
    )
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--extras", metavar="DIR", help="folder holding uvloop and httptools (pip install --target)"
    )
    parser.add_argument(
        "--post",
        action="store_true",
        help="instead: the POST /token HTTP floor, litestar vs a bare ASGI app, both under granian",
    )
    parser.add_argument("--append-results", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 5 or not 1 <= args.duration <= 60 or not 1 <= args.concurrency <= 4096:
        parser.error("rounds 1..5, duration 1..60, concurrency 1..4096")

    generator = pick_generator(args.generator)
    if has_taskset():
        os.sched_setaffinity(0, {LOAD_CPU})
    command = shlex.join([".venv/bin/python", "bench/server_choice.py", *sys.argv[1:]])
    print(f"# {command}")
    print(
        f"# load generator: {generator}"
        + _generator_note(generator, args.generator)
        + ("" if generator == "wrk" else "; it may saturate before granian does")
    )
    results: dict[str, list[Any]] = {}
    commands: dict[str, str] = {}
    load_cmd = ""
    with tempfile.TemporaryDirectory(prefix="server-choice-") as tmp:
        for _ in range(args.rounds):
            port = free_port()
            servers = _post_servers(port) if args.post else _servers(port, args.extras)
            for name, argv, env in servers:
                argv = [*pin(SERVER_CPU), *argv]
                commands[name] = shlex.join(argv)
                log = Path(tmp) / "server.log"
                proc = start(argv, log, env=env, cwd=HERE)
                try:
                    url = f"http://127.0.0.1:{port}/token" if args.post else f"http://127.0.0.1:{port}/"
                    wait_http(url, proc, log, method="POST" if args.post else "GET")
                    load: dict[str, Any] = {
                        "concurrency": args.concurrency,
                        "workdir": Path(tmp),
                        "server_pid": proc.pid,
                    }
                    if args.post:
                        load.update(
                            method="POST",
                            body=POST_BODY,
                            headers={"Content-Type": "application/x-www-form-urlencoded"},
                        )
                    run_load(generator, url, duration=args.warmup, **load)
                    r = run_load(generator, url, duration=args.duration, **load)
                finally:
                    stop(proc)
                load_cmd = r.command
                results.setdefault(name, []).append(r)
                print(
                    f"{name:28} {r.rps:9,.0f} req/s ({r.per_core or 0:,.0f} per server CPU-second)"
                    f"  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  errors {r.errors}"
                    f"  server CPU {r.server_cpu or 0:.0f}% (core {r.server_core_busy or 0:.0f}% busy,"
                    f" softirq {r.server_core_softirq or 0:.0f}%)"
                    f"  generator CPU {r.generator_cpu or 0:.0f}%"
                )
    med = {name: statistics.median(r.rps for r in rs) for name, rs in results.items()}
    first = next(iter(results))
    base = med[first]
    pc_base = statistics.median(r.per_core or 0 for r in results[first])
    print(f"# median over rounds; ratio = {first} / server")
    for name, rps in med.items():
        pc = statistics.median(r.per_core or 0 for r in results[name])
        print(
            f"{name:28} {rps:9,.0f} req/s  first/this = {base / rps:.2f}x   per server CPU-second {pc:,.0f}"
            f"  first/this = {pc_base / pc:.2f}x"
        )
    for name, cmd in commands.items():
        print(f"# server {name}: {cmd}")
    print(f"# load: {load_cmd}")

    if args.append_results:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines = [
            f"### Run of {stamp}",
            "",
            f"`{command}`",
            "",
            f"Load generator: {generator}, {args.concurrency} connections, {args.duration:g} s per server, "
            f"{args.rounds} alternating rounds (median); server pinned to CPU {SERVER_CPU}, generator to "
            f"CPU {LOAD_CPU}. "
            + (
                "App: POST /token floor (`create_post_app`, `create_asgi_route_post_app`, "
                "`create_raw_post_app`): read a 1.1 KB form, answer a 0.75 KB JSON, one worker."
                if args.post
                else "App: litestar 'hello world' (`create_hello_app`), one worker."
            ),
            "",
            f"| server | req/s (median) | rounds | {first} / this | req per server CPU-second (median) "
            f"| {first} / this | p99 (last round) |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        for name, rs in results.items():
            pc = statistics.median(r.per_core or 0 for r in rs)
            lines.append(
                f"| {name} | {med[name]:,.0f} | {', '.join(f'{r.rps:,.0f}' for r in rs)} | "
                f"{base / med[name]:.2f}x | {pc:,.0f} | {pc_base / pc:.2f}x | {rs[-1].p99_ms:.2f} ms |"
            )
        lines += [
            "",
            "| server | server CPU, last round (its core busy, softirq) | generator CPU |",
            "| --- | ---: | ---: |",
        ]
        lines += [
            f"| {name} | {_pct(rs[-1].server_cpu)} ({_pct(rs[-1].server_core_busy)}, "
            f"{_pct(rs[-1].server_core_softirq)}) | {_pct(rs[-1].generator_cpu)} |"
            for name, rs in results.items()
        ]
        lines += (
            [""] + [f"- {name}: `{cmd}`" for name, cmd in commands.items()] + [f"- load: `{load_cmd}`", ""]
        )

        _append_section(lines, section=SECTION_POST if args.post else SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
