"""How much a cached-key purpose-token verify costs beyond the signature check itself.

Same run, same tokens, same keys, for ES256 and RS256:
  raw        pyca/cryptography verify of the signing input (DER signature prepared outside the loop):
             the denominator, no parsing, no claims
  floor      what any verifier of a compact JWT must do besides that, with the standard library and
             msgspec and nothing else: split the token, strict-base64url-decode payload and signature
             (ES256: r||s to DER), the signature, msgspec-decode the claims and the duplicate-name
             check; no header, no key lookup, no claim checks. It uses the verifier's own fastest
             pieces for these steps (`split_parts`, `der_signature`, `refuse_duplicates`), so a
             faster piece lowers the floor too: our verifier cannot go below it.
  verifier   exchange.verify.PurposeTokenVerifier.verify (static JWKS, every check, claims decoded)
  pyjwt      jwt.decode with key, algorithms, audience and issuer (signature + exp/iat/aud/iss)
  joserfc    jwt.decode + JWTClaimsRegistry.validate (the plain joserfc way)

    .venv/bin/python bench/verify_bench.py [--number 300] [--repeat 40]
    .venv/bin/python bench/verify_bench.py --profile /tmp/verify-prof [--seconds 10]
    .venv/bin/python bench/verify_bench.py --instructions [--number 300]

Per-operation time is the best of `repeat` runs of `number` calls (least disturbed by the machine:
short runs, many of them, so on a shared machine some run of each candidate goes undisturbed); the
candidates' runs are interleaved so a busy moment does not favour one of them. The bench runs on
the server CPU (0) while nothing else of ours does. `--profile` runs py-spy over a loop of
`exchange.verify` alone, per algorithm, and groups the samples by module. `--instructions` counts
instructions per call instead (valgrind's callgrind, each candidate's calls between two dumps, an
empty loop subtracted): the same on a busy machine as on a quiet one, but not time, since the
Python share of the work retires far fewer instructions per cycle than the signature's arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cryptography
import joserfc
import jwt as pyjwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from harness import procs, profile, report
from joserfc import jws
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, Key, RSAKey

from exchange.verify import PurposeTokenVerifier
from exchange.verify.claims import CLAIMS_DECODER
from exchange.verify.compact import split_parts
from exchange.verify.jws import der_signature
from exchange.verify.strictjson import refuse_duplicates

ISSUER = "https://exchange.bench"
NAMES = ("floor", "verifier", "pyjwt", "joserfc")
AUDIENCE = "https://payments.internal"


def make_token(key: Key, alg: str, now: int) -> str:
    claims = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": AUDIENCE,
        "exp": now + 300,
        "iat": now,
        "jti": "4f1c2b6e9a7d4c3b8e5f0a1b2c3d4e5f",
        "client_id": "bank-web",
        "scope": "payments.approve",
        "acr": "urn:mfa",
        "amr": ["pwd", "mfa"],
        "auth_time": now - 30,
        "authorization_details": [{"type": "payment", "amount": "250.00", "currency": "EUR"}],
    }
    header = {"alg": alg, "typ": "at+jwt", "kid": key.kid}
    # Compact JSON, member order as the exchange mints them: what real issuers emit (msgspec, PyJWT,
    # joserfc, jose all write it without spaces), so the payload is the size a downstream sees.
    payload = json.dumps(claims, separators=(",", ":"))
    return jws.serialize_compact(header, payload, key, algorithms=[alg])


def candidates(key: Key, alg: str, token: str) -> dict[str, Callable[[], Any]]:
    public = key.as_dict(private=False)
    native_public = RSAKey.import_key(public) if alg.startswith("RS") else ECKey.import_key(public)
    crypto_key: Any = native_public.public_key
    signing_input, _, signature = token.rpartition(".")
    raw_signature = joserfc.util.urlsafe_b64decode(signature.encode())
    message = signing_input.encode()

    if alg == "ES256":
        der = encode_dss_signature(
            int.from_bytes(raw_signature[:32], "big"), int.from_bytes(raw_signature[32:], "big")
        )
        algorithm = ec.ECDSA(hashes.SHA256())

        def raw() -> None:
            crypto_key.verify(der, message, algorithm)
    else:
        pkcs1 = padding.PKCS1v15()
        sha256 = hashes.SHA256()

        def raw() -> None:
            crypto_key.verify(raw_signature, message, pkcs1, sha256)

    def floor() -> None:
        signing_input, _, payload, sig = split_parts(token, 8192)
        if alg == "ES256":
            crypto_key.verify(der_signature(sig, 32), signing_input, algorithm)
        else:
            crypto_key.verify(sig, signing_input, pkcs1, sha256)
        refuse_duplicates(payload, CLAIMS_DECODER.decode(payload))

    verifier = PurposeTokenVerifier(
        issuer=ISSUER, audience=AUDIENCE, jwks={"keys": [public]}, algorithms=[alg]
    )

    def ours() -> None:
        verifier.verify(token)

    def pyjwt_decode() -> None:
        pyjwt.decode(token, crypto_key, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER)

    registry = jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": ISSUER}, aud={"essential": True, "value": AUDIENCE}
    )

    def joserfc_decode() -> None:
        decoded = jose_jwt.decode(token, native_public, algorithms=[alg])
        registry.validate(decoded.claims)

    return {"raw": raw, "floor": floor, "verifier": ours, "pyjwt": pyjwt_decode, "joserfc": joserfc_decode}


def measure(fns: dict[str, Callable[[], Any]], number: int, repeat: int) -> dict[str, float]:
    """Best per-call time of each candidate; runs are interleaved so machine noise hits all alike."""
    for fn in fns.values():
        fn()  # warm up, and fail loudly before timing if a candidate rejects the token
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            best[name] = min(best[name], timeit.timeit(fn, number=number) / number)
    return best


def tokens(now: int) -> dict[str, tuple[Key, str]]:
    keys: dict[str, Key] = {
        "ES256": ECKey.generate_key("P-256", auto_kid=True),
        "RS256": RSAKey.generate_key(2048, auto_kid=True),
    }
    return {alg: (key, make_token(key, alg, now)) for alg, key in keys.items()}


def loop(alg: str, seconds: float) -> None:
    """--loop: only our verifier, for py-spy to sample (after a moment: imports are done)."""
    key, token = tokens(int(time.time()))[alg]
    ours = candidates(key, alg, token)["verifier"]
    time.sleep(0.3)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(200):
            ours()


def segments(calls: int, go: Path | None) -> None:
    """--segments (under callgrind): each candidate's calls between two os.getppid() calls, which
    callgrind is told to dump before; the first timed segment is an empty loop, subtracted. With
    `go`: print "ready" once warm and wait for that file (callgrind turns instrumentation on first)."""
    order = []
    fns: list[Callable[[], Any]] = []
    for alg, (key, token) in tokens(int(time.time())).items():
        for name, fn in candidates(key, alg, token).items():
            fn()
            fn()  # warm: every import, memo and cache is in place before counting
            order.append(f"{alg} {name}")
            fns.append(fn)

    def empty() -> None:
        pass

    if go is not None:
        print("ready", flush=True)
        deadline = time.monotonic() + 120
        while not go.exists():  # short sleeps: valgrind takes the instrumentation command between them
            if time.monotonic() > deadline:
                raise SystemExit("callgrind's instrumentation was never turned on")
            time.sleep(0.01)
    os.getppid()
    for fn in [empty, *fns]:
        for _ in range(calls):
            fn()
        os.getppid()
    print(json.dumps(order))


def run_instructions(calls: int) -> dict[str, dict[str, float]]:
    """Instructions per call of each candidate (callgrind): repeatable whatever the machine's load.

    Instrumentation starts off and is turned on (`callgrind_control`) once every candidate is warm,
    so the imports and key generation run at valgrind's plain speed (~4x faster than instrumented);
    without callgrind_control, everything is instrumented from the start (the same counts, slower).
    """
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind: apt-get install -y valgrind")
    control = shutil.which("callgrind_control")
    with tempfile.TemporaryDirectory(prefix="verify-cg-") as tmp:
        out, go, log = Path(tmp) / "cg.out", Path(tmp) / "go", Path(tmp) / "valgrind.log"
        argv = [
            "valgrind", "--tool=callgrind", "--dump-before=os_getppid", f"--callgrind-out-file={out}",
            f"--log-file={log}", *(["--instr-atstart=no"] if control else []),
            sys.executable, __file__, "--segments", str(calls), *(["--go", str(go)] if control else []),
        ]  # fmt: skip
        with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None
            try:
                if control:
                    if child.stdout.readline().strip() != "ready":
                        raise SystemExit(f"the counted run did not start: {log.read_text()[-2000:]}")
                    turn_on = [control, "--instr=on", str(child.pid)]
                    subprocess.run(turn_on, check=True, capture_output=True, timeout=120)
                    go.touch()
                lines = child.stdout.read().strip().splitlines()
                if child.wait(timeout=1800) != 0 or not lines:
                    raise SystemExit(f"callgrind run failed: {log.read_text()[-2000:]}")
            finally:
                if child.poll() is None:
                    child.kill()
        order = json.loads(lines[-1])
        dumps = sorted(Path(tmp).glob("cg.out.*"), key=lambda f: int(f.suffix[1:]))
        totals = []
        for dump in dumps:
            summary = next(line for line in dump.read_text().splitlines() if line.startswith("summary:"))
            totals.append(int(summary.split()[1]))
    if len(totals) != len(order) + 2:
        raise SystemExit("callgrind gave no per-segment dumps: this Python's os_getppid has no symbol")
    empty = totals[1] / calls  # totals[0]: whatever ran before the first marker
    rows: dict[str, dict[str, float]] = {}
    for label, total in zip(order, totals[2:], strict=True):
        alg, name = label.split()
        rows.setdefault(alg, {})[name] = total / calls - empty
    return rows


def run_profile(out_dir: Path, seconds: float) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for alg in ("ES256", "RS256"):
        out = out_dir / f"verify-{alg}.collapsed"
        target = [
            *procs.pin(procs.SERVER_CPUS),
            sys.executable,
            __file__,
            "--loop",
            alg,
            "--seconds",
            str(seconds),
        ]
        argv = [*profile.record_argv(out, seconds + 5, mode="cpu"), "--", *target]
        subprocess.run(argv, check=True, capture_output=True, timeout=seconds + 120)
        summary = profile.summarise(out, steps=False, within=".ours (verify_bench.py")
        parts.append(f"{alg}: `{' '.join(argv)}`\n\n```\n{summary}\n```")
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=300, help="calls per timed run (bounded)")
    parser.add_argument("--repeat", type=int, default=40, help="timed runs; the best is reported")
    parser.add_argument("--profile", metavar="DIR", help="py-spy over our verifier alone, per algorithm")
    parser.add_argument("--seconds", type=float, default=10.0, help="--profile: seconds per algorithm")
    parser.add_argument(
        "--instructions", action="store_true", help="instructions per call under callgrind, not time"
    )
    parser.add_argument("--loop", choices=["ES256", "RS256"], help=argparse.SUPPRESS)
    parser.add_argument("--segments", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--go", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.loop:
        loop(options.loop, min(options.seconds, 120))
        return
    if options.segments:
        segments(options.segments, options.go)
        return
    if options.instructions:
        calls = min(options.number, 2000)
        title = "Purpose-token verification, cached key: instructions per call (callgrind)"
        print(report.header(title, f"{calls} calls each, empty loop subtracted; ratio = / raw verify."))
        table = [
            [alg, f"{t['raw'] / 1000:.1f}k"]
            + [f"+{(t[n] - t['raw']) / 1000:.1f}k ({report.ratio(t[n] / t['raw'])})" for n in NAMES]
            for alg, t in run_instructions(calls).items()
        ]
        print(report.table(["alg", "raw verify", *(f"{n} over raw" for n in NAMES)], table))
        return
    if options.profile:
        print(
            report.header("Verifier profile (py-spy, on-CPU samples: the GIL-free signature call included)")
        )
        print(run_profile(Path(options.profile), min(options.seconds, 120)))
        return
    number = min(options.number, 100_000)
    repeat = min(options.repeat, 200)
    procs.pin_self(procs.SERVER_CPUS)
    rows: list[tuple[str, dict[str, float]]] = []
    for alg, (key, token) in tokens(int(time.time())).items():
        rows.append((alg, measure(candidates(key, alg, token), number, repeat)))
    versions = (
        f"cryptography {cryptography.__version__}, joserfc {joserfc.__version__}, PyJWT {pyjwt.__version__}, "
        f"{platform.machine()}; on CPU {procs.SERVER_CPUS}; best of {repeat} runs of {number} calls, "
        "candidates interleaved; ratio = time / raw signature verify of the same token."
    )
    print(report.header("Purpose-token verification, cached key", versions))
    table = []
    for alg, t in rows:
        table.append(
            [alg, report.us(t["raw"])]
            + [f"{report.us(t[name])} ({report.ratio(t[name] / t['raw'])})" for name in NAMES]
        )
    print(
        report.table(
            ["alg", "raw verify", "floor", "exchange.verify", "PyJWT decode", "joserfc decode+validate"],
            table,
        )
    )
    print(
        "\nexchange.verify runs every check (typ, alg allow-list, kid, signature, iss, aud, exp/iat, "
        "lifetime, "
        "strict claims); PyJWT and joserfc check the signature, exp, aud and iss only. floor: split, "
        "strict base64url, signature, claims decoded with the duplicate-name check, nothing else."
    )


if __name__ == "__main__":
    main()
