"""Why the service runs on granian: a litestar "hello world" under granian and under uvicorn, one worker
each, in the same run, same load generator, same pinning (server on CPU 0, generator on CPU 1).

uvicorn is measured as the venv has it (pure-Python h11 + asyncio, which is what `pip install uvicorn`
gives) and, when uvloop and httptools can be imported (in the venv, or from `--extras DIR`, a folder
made with `pip install --target DIR uvloop httptools` so the service's own venv is left alone), as
`uvicorn[standard]` (httptools + uvloop), its fastest configuration. granian runs with the defaults
`exchange serve` uses.

Usage:
    .venv/bin/python bench/server_choice.py [--duration 10] [--concurrency 64] [--rounds 2]
        [--extras /tmp/uvstd] [--post]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import load, procs, report
from harness.load import LoadResult
from litestar import Litestar, Request, Response, asgi, get, post

HERE = Path(__file__).resolve().parent


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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternate the servers this many times (median)"
    )
    parser.add_argument(
        "--extras", metavar="DIR", help="folder holding uvloop and httptools (pip install --target)"
    )
    parser.add_argument(
        "--post",
        action="store_true",
        help="instead: the POST /token HTTP floor, litestar vs a bare ASGI app, both under granian",
    )
    args = parser.parse_args()
    if not 1 <= args.rounds <= 5 or not 1 <= args.duration <= 60 or not 1 <= args.concurrency <= 4096:
        parser.error("rounds 1..5, duration 1..60, concurrency 1..4096")
    procs.pin_self()
    results: dict[str, list[LoadResult]] = {}
    commands: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="server-choice-") as tmp:
        for _ in range(args.rounds):
            port = procs.free_port()
            servers = _post_servers(port) if args.post else _servers(port, args.extras)
            for name, argv, env in servers:
                url = f"http://127.0.0.1:{port}/token" if args.post else f"http://127.0.0.1:{port}/"
                with procs.Process(name, [*procs.pin(procs.SERVER_CPUS), *argv], env=env, cwd=HERE) as server:
                    commands[name] = server.command
                    server.wait_http(url, method="POST" if args.post else "GET")
                    phase: dict[str, Any] = {
                        "concurrency": args.concurrency,
                        "workdir": Path(tmp),
                        "server": server,
                    }
                    if args.post:
                        phase |= {
                            "method": "POST",
                            "body": POST_BODY,
                            "headers": {"Content-Type": "application/x-www-form-urlencoded"},
                        }
                    if args.warmup >= 1:
                        load.run(url, duration=args.warmup, **phase)
                    r = load.run(url, duration=args.duration, **phase)
                results.setdefault(name, []).append(r)
                print(
                    f"# {name:36} {r.rps:9,.0f} req/s  p99 {r.p99_ms:6.2f} ms  errors {r.errors}  "
                    f"{r.cpu_note()}",
                    flush=True,
                )
    first = next(iter(results))
    base = statistics.median(r.rps for r in results[first])
    base_cpu = statistics.median(r.per_cpu_second or 0 for r in results[first])
    rows = []
    for name, rs in results.items():
        med = statistics.median(r.rps for r in rs)
        cpu = statistics.median(r.per_cpu_second or 0 for r in rs)
        rows.append(
            [
                name,
                f"{med:,.0f}/s",
                ", ".join(f"{r.rps:,.0f}" for r in rs),
                report.ratio(med / base),
                f"{cpu:,.0f}",
                report.ratio(cpu / base_cpu if cpu else None),
                report.ms(rs[-1].p99_ms),
                sum(r.errors for r in rs),
            ]
        )
    what = (
        "POST /token floor: read a 1.1 KB form, answer a 0.75 KB JSON (`create_post_app`, "
        "`create_asgi_route_post_app`, `create_raw_post_app`)"
        if args.post
        else "litestar 'hello world' (`create_hello_app`)"
    )
    print(
        report.header(
            "HTTP floor under POST /token" if args.post else "ASGI server choice",
            f"{procs.pinning_note()}; wrk {args.concurrency} connections, {args.duration:g} s per server, "
            f"{args.rounds} alternating round(s), median; one worker; app: {what}.",
        )
    )
    print(
        report.table(
            [
                "server",
                "req/s (median)",
                "rounds",
                "this / first",
                "per server CPU-second",
                "this / first",
                "p99 (last round)",
                "errors",
            ],
            rows,
        )
    )
    print("\n" + "\n".join(f"- {name}: `{cmd}`" for name, cmd in commands.items()))
    print(f"- load: `{results[first][-1].command}`")
    return 0 if all(r.errors == 0 for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
