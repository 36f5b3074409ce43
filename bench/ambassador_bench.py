"""What the ambassador adds: latency and throughput through it versus calling the upstream directly.

Everything on 127.0.0.1: a tiny upstream (uvicorn, one process, on CPU 1 with wrk) answering a small
JSON body, and the ambassador (`exchange ambassador`, one worker, on CPU 0) in front of it with a JWKS
file and a route table. Three paths, each measured with wrk at 1 connection (latency) and at
`--concurrency` (throughput):
  direct     wrk -> upstream
  open       wrk -> ambassador (open route: proxying only) -> upstream
  verified   wrk -> ambassador (ES256 purpose token verified, identity headers added) -> upstream

    .venv/bin/python bench/ambassador_bench.py [--seconds 5] [--concurrency 32] [--server granian|uvicorn]
        [--max-connections 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import load, procs, report
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
        "--server", choices=["granian", "uvicorn"], default="granian", help="ambassador's server"
    )
    parser.add_argument("--max-connections", type=int, default=32, help="ambassador's upstream pool size")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per path; 0: none")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        import uvicorn

        uvicorn.run(
            upstream_app, host="127.0.0.1", port=args.serve_upstream, log_level="warning", access_log=False
        )
        return 0
    seconds = max(1, min(args.seconds, 60))
    procs.pin_self()
    key = ECKey.generate_key("P-256", auto_kid=True)
    up_port, amb_port = procs.free_port(), procs.free_port()
    results: dict[str, tuple[load.LoadResult, load.LoadResult]] = {}
    with tempfile.TemporaryDirectory(prefix="ambassador-bench-") as tmp:
        work = Path(tmp)
        jwks = work / "jwks.json"
        jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
        routes = work / "routes.toml"
        routes.write_text(
            f'[[route]]\nprefix = "/open"\nopen = true\n\n[[route]]\nprefix = "/"\npurpose = "{PURPOSE}"\n'
        )
        upstream_argv = [
            *procs.pin(procs.LOAD_CPUS),
            sys.executable,
            __file__,
            "--serve-upstream",
            str(up_port),
        ]
        amb_argv = [
            *procs.pin(procs.SERVER_CPUS),
            str(procs.BIN / "exchange"),
            "ambassador",
            "--listen",
            f"127.0.0.1:{amb_port}",
            "--upstream",
            f"http://127.0.0.1:{up_port}",
            "--issuer",
            ISSUER,
            "--audience",
            AUDIENCE,
            "--jwks-file",
            str(jwks),
            "--routes",
            str(routes),
            "--server",
            args.server,
            "--max-connections",
            str(args.max_connections),
        ]
        with (
            procs.Process("upstream", upstream_argv) as upstream,
            procs.Process("ambassador", amb_argv) as amb,
        ):
            auth = {"Authorization": f"Bearer {purpose_token(key)}"}
            path = "/payments/p-1001/approve"
            paths = {
                "direct": (f"http://127.0.0.1:{up_port}{path}", upstream),
                "open": (f"http://127.0.0.1:{amb_port}/open{path}", amb),
                "verified": (f"http://127.0.0.1:{amb_port}{path}", amb),
            }
            upstream.wait_http(paths["direct"][0])
            for url, _ in paths.values():
                wait_ok(amb, url, auth)
                if args.warmup >= 1:
                    load.run(
                        url, headers=auth, concurrency=args.concurrency, duration=args.warmup, workdir=work
                    )
            for name, (url, server) in paths.items():
                single = load.run(
                    url, headers=auth, concurrency=1, duration=seconds, workdir=work, server=server
                )
                many = load.run(
                    url,
                    headers=auth,
                    concurrency=args.concurrency,
                    duration=seconds,
                    workdir=work,
                    server=server,
                )
                results[name] = (single, many)
                print(
                    f"# {name:9} p50 {single.p50_ms:.2f} ms p99 {single.p99_ms:.2f} ms "
                    f"{many.rps:,.0f} req/s "
                    f"errors {single.errors + many.errors}",
                    flush=True,
                )
            commands = {"upstream": upstream.command, "ambassador": amb.command}
    direct = results["direct"]
    rows = [
        [
            name,
            report.ms(s.p50_ms),
            report.ms(s.p99_ms),
            f"{s.p50_ms - direct[0].p50_ms:+.2f} ms",
            report.rate(m.rps),
            report.ratio(m.rps / direct[1].rps),
            s.errors + m.errors,
        ]
        for name, (s, m) in results.items()
    ]
    print(
        report.header(
            "Ambassador overhead",
            f"{procs.pinning_note()} (the upstream shares CPU 1 with wrk); "
            f"ambassador {args.server}, one worker, "
            f"upstream pool {args.max_connections}; wrk {seconds} s per figure: latency at 1 connection, "
            f"throughput at {args.concurrency}.",
        )
    )
    print(
        report.table(
            [
                "path",
                "p50 (c=1)",
                "p99 (c=1)",
                "added p50",
                f"throughput (c={args.concurrency})",
                "vs direct",
                "errors",
            ],
            rows,
        )
    )
    print("\n" + "\n".join(f"- {k}: `{v}`" for k, v in commands.items()))
    print(f"- load: `{results['verified'][1].command}`")
    return 0 if all(s.errors + m.errors == 0 for s, m in results.values()) else 1


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
