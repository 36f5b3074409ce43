"""Five placements side by side: direct, plain nginx, the ambassador (open and verified), and nginx with
our forward-auth gateway.

Everything on 127.0.0.1. The bench's own upstream (uvicorn, one process) shares CPU 1 with wrk; the
server side under test (the ambassador, nginx with one worker, the gateway: one worker each) is pinned
to CPU 0. Five routes, each measured with wrk at 1 connection (latency) and at `--concurrency`
(throughput):
  direct       wrk -> upstream
  nginx        wrk -> nginx (plain reverse proxy, keep-alive upstream) -> upstream
  open         wrk -> ambassador (open route: proxying only) -> upstream
  verified     wrk -> ambassador (ES256 purpose token verified, identity headers added) -> upstream
  gateway      wrk -> nginx (auth_request -> exchange gateway, ES256 verified) -> upstream

    .venv/bin/python bench/ambassador_bench.py [--seconds 5] [--concurrency 32] [--server granian|uvicorn]
        [--max-connections 32] [--profile SECONDS] [--only NAME,...]

`--profile N` records N seconds of py-spy on the ambassador's verified route under load and prints
where its time goes. nginx is Debian's package (installed with apt-get when missing, as root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import load, nginx, procs, profile, report
from joserfc import jws
from joserfc.jwk import ECKey

ISSUER = "https://exchange.bench"
AUDIENCE = "https://payments.internal"
PURPOSE = "payments.approve"
BODY = json.dumps({"payment_id": "p-1001", "status": "approved", "amount": "250.00"}).encode()


async def upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The upstream: drains the request, answers a fixed small JSON body."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def purpose_token(key: ECKey) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": AUDIENCE,
        "exp": now + 900,
        "iat": now,
        "jti": "bench",
        "client_id": "bank-web",
        "scope": PURPOSE,
        "amr": ["pwd", "mfa"],
    }
    header = {"alg": "ES256", "typ": "at+jwt", "kid": key.kid}
    return jws.serialize_compact(header, json.dumps(claims), key, algorithms=["ES256"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=5, help="seconds per wrk run (1..60)")
    parser.add_argument(
        "--server",
        choices=["granian", "uvicorn"],
        default="granian",
        help="ambassador's and gateway's server",
    )
    parser.add_argument("--max-connections", type=int, default=32, help="ambassador's upstream pool size")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per route; 0: none")
    parser.add_argument("--profile", type=int, default=0, help="py-spy seconds on the verified route")
    parser.add_argument("--only", default=",".join(ROUTES), help="comma-separated routes to run")
    parser.add_argument(
        "--baseline-exchange",
        help="another checkout's `exchange` (e.g. /work/main/.venv/bin/exchange): adds its ambassador's "
        "verified route as 'verified (baseline)', measured in the same run",
    )
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        import uvicorn

        uvicorn.run(
            upstream_app, host="127.0.0.1", port=args.serve_upstream, log_level="warning", access_log=False
        )
        return 0
    seconds = max(1, min(args.seconds, 60))
    only = [name for name in ROUTES if name in args.only.split(",")]
    nginx_path = nginx.binary() if {"nginx", "gateway"} & set(only) else None
    if {"nginx", "gateway"} & set(only) and nginx_path is None:
        print("# nginx is not installed (apt-get install nginx): skipping the nginx routes", flush=True)
        only = [name for name in only if name not in ("nginx", "gateway")]
    procs.pin_self()
    key = ECKey.generate_key("P-256", auto_kid=True)
    if args.baseline_exchange:
        only.append(BASELINE)
    ports = {
        name: procs.free_port()
        for name in ("upstream", "ambassador", "baseline", "gateway", "nginx", "front")
    }
    results: dict[str, tuple[load.LoadResult, load.LoadResult]] = {}
    profiles: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ambassador-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        jwks = work / "jwks.json"
        jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
        routes = work / "routes.toml"
        routes.write_text(
            f'[[route]]\nprefix = "/open"\nopen = true\n\n[[route]]\nprefix = "/"\npurpose = "{PURPOSE}"\n'
        )
        verifier_args = ["--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-file", str(jwks),
                         "--routes", str(routes), "--server", args.server]  # fmt: skip
        upstream = stack.enter_context(procs.Process("upstream", [
            *procs.pin(procs.LOAD_CPUS), sys.executable, __file__, "--serve-upstream", str(ports["upstream"]),
        ]))  # fmt: skip
        servers: dict[str, procs.Process] = {}
        if {"open", "verified"} & set(only):
            servers["ambassador"] = stack.enter_context(procs.Process("ambassador", [
                *procs.pin(procs.SERVER_CPUS), str(procs.BIN / "exchange"), "ambassador",
                "--listen", f"127.0.0.1:{ports['ambassador']}", "--upstream", f"http://127.0.0.1:{ports['upstream']}",
                "--max-connections", str(args.max_connections), *verifier_args,
            ]))  # fmt: skip
        if BASELINE in only:
            servers["baseline"] = stack.enter_context(procs.Process("baseline ambassador", [
                *procs.pin(procs.SERVER_CPUS), args.baseline_exchange, "ambassador",
                "--listen", f"127.0.0.1:{ports['baseline']}", "--upstream", f"http://127.0.0.1:{ports['upstream']}",
                "--max-connections", str(args.max_connections), *verifier_args,
            ]))  # fmt: skip
        if "gateway" in only:
            servers["gateway"] = stack.enter_context(procs.Process("gateway", [
                *procs.pin(procs.SERVER_CPUS), str(procs.BIN / "exchange"), "gateway", "--proxy", "nginx",
                "--listen", f"127.0.0.1:{ports['gateway']}", *verifier_args,
            ]))  # fmt: skip
        if nginx_path is not None and {"nginx", "gateway"} & set(only):
            body = PLAIN_NGINX % {"listen": ports["nginx"], "upstream": ports["upstream"]}
            body += nginx.docs_gateway_block(
                procs.ROOT / "docs" / "VERIFY.md", listen=ports["front"], upstream=ports["upstream"],
                gateway=ports["gateway"],
            )  # fmt: skip
            servers["nginx"] = stack.enter_context(
                procs.Process(
                    "nginx",
                    [*procs.pin(procs.SERVER_CPUS), *nginx.argv(nginx_path, nginx.write_config(work, body))],
                )
            )
        auth = {"Authorization": f"Bearer {purpose_token(key)}"}
        path = "/payments/p-1001/approve"
        urls = {
            "direct": (f"http://127.0.0.1:{ports['upstream']}{path}", upstream),
            "nginx": (f"http://127.0.0.1:{ports['nginx']}{path}", servers.get("nginx")),
            "open": (f"http://127.0.0.1:{ports['ambassador']}/open{path}", servers.get("ambassador")),
            "verified": (f"http://127.0.0.1:{ports['ambassador']}{path}", servers.get("ambassador")),
            "gateway": (f"http://127.0.0.1:{ports['front']}{path}", servers.get("nginx")),
            BASELINE: (f"http://127.0.0.1:{ports['baseline']}{path}", servers.get("baseline")),
        }
        upstream.wait_http(urls["direct"][0])
        for name in only:
            url, server = urls[name]
            assert server is not None
            wait_ok(server, url, auth)
            if args.warmup >= 1:
                load.run(url, headers=auth, concurrency=args.concurrency, duration=args.warmup, workdir=work)
        for name in only:
            url, server = urls[name]
            # The server side's CPU: the gateway's too when nginx asks it.
            watched = servers.get("gateway") if name == "gateway" else server
            single = load.run(
                url, headers=auth, concurrency=1, duration=seconds, workdir=work, server=watched
            )
            many = load.run(
                url,
                headers=auth,
                concurrency=args.concurrency,
                duration=seconds,
                workdir=work,
                server=watched,
            )
            results[name] = (single, many)
            print(
                f"# {name:9} p50 {single.p50_ms:.2f} ms p99 {single.p99_ms:.2f} ms {many.rps:,.0f} req/s "
                f"errors {single.errors + many.errors}",
                flush=True,
            )
        if args.profile:
            for route, server_name in (("verified", "ambassador"), (BASELINE, "baseline")):
                if server_name in servers:
                    profiles[route] = _profile(servers[server_name], urls[route][0], auth, args, work)
        commands = {name: process.command for name, process in {"upstream": upstream, **servers}.items()}
    print(_report(results, args, seconds))
    for route, text in profiles.items():
        print(f"\nWhere the ambassador's time goes ({route} route; py-spy, samples on a CPU, GIL or not):\n")
        print("```\n" + text + "\n```")
    print("\n" + "\n".join(f"- {k}: `{v}`" for k, v in commands.items()))
    if "verified" in results:
        print(f"- load: `{results['verified'][1].command}`")
    return 0 if all(s.errors + m.errors == 0 for s, m in results.values()) else 1


def _report(
    results: dict[str, tuple[load.LoadResult, load.LoadResult]], args: argparse.Namespace, seconds: int
) -> str:
    direct = results.get("direct")
    plain = results.get("nginx")

    def vs(value: float, base: tuple[load.LoadResult, load.LoadResult] | None) -> str:
        return report.ratio(value / base[1].rps) if base and base[1].rps else "-"

    rows = [
        [
            name,
            report.ms(s.p50_ms),
            report.ms(s.p99_ms),
            f"{s.p50_ms - direct[0].p50_ms:+.2f} ms" if direct else "-",
            report.rate(m.rps),
            vs(m.rps, direct),
            vs(m.rps, plain),
            f"{100 * m.server_cpu:.0f}%" if m.server_cpu is not None else "-",
            s.errors + m.errors,
        ]
        for name, (s, m) in results.items()
    ]
    title = report.header(
        "Five placements",
        f"{procs.pinning_note()} (the upstream shares CPU 1 with wrk); ambassador and gateway {args.server}, "
        f"one worker each, nginx one worker; ambassador upstream pool {args.max_connections}; "
        f"wrk {seconds} s per figure: latency at 1 connection, throughput at {args.concurrency}.",
    )
    table = report.table(
        ["route", "p50 (c=1)", "p99 (c=1)", "added p50", f"throughput (c={args.concurrency})", "vs direct",
         "vs nginx", "server CPU", "errors"],
        rows,
    )  # fmt: skip
    return title + "\n" + table


def _profile(
    server: procs.Process, url: str, auth: dict[str, str], args: argparse.Namespace, work: Path
) -> str:
    out = work / f"ambassador-{server.pid}.folded"
    pid = server.pids()[-1]  # granian's worker (the tree's leaf), not its supervisor
    spy = profile.attach(pid, out, args.profile, mode="cpu")
    load.run(url, headers=auth, concurrency=args.concurrency, duration=args.profile + 1, workdir=work)
    spy.wait(timeout=args.profile + 60)
    return profile.summarise(out, steps=False, top=15)


ROUTES = ("direct", "nginx", "open", "verified", "gateway")
BASELINE = "verified (baseline)"
PLAIN_NGINX = """
upstream plain_upstream { server 127.0.0.1:%(upstream)d; keepalive 32; }
server {
    listen 127.0.0.1:%(listen)d;
    location / {
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://plain_upstream;
    }
}
"""


def wait_ok(server: procs.Process, url: str, headers: dict[str, str]) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.tail()}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not answering 200:\n{server.tail()}")


if __name__ == "__main__":
    sys.exit(main())
