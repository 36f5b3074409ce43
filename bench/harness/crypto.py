"""The raw signature operations (pyca/cryptography, no JOSE framing): the floor under every step.

Timed on the server's CPU while the server is idle, in thread CPU time (a shared machine can take
the core away mid-run; CPU time does not count that), best of several runs, over a token-sized
signing input.
"""

from __future__ import annotations

import os
import time
import timeit
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from harness.procs import SERVER_CPUS, can_pin

MESSAGE = b"e" * 600  # about what a compact JWS signing input is


def operations() -> dict[str, Callable[[], object]]:
    """ES256 and RS256 sign and verify, each a zero-argument call."""
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ecdsa, pkcs1, sha256 = ec.ECDSA(hashes.SHA256()), padding.PKCS1v15(), hashes.SHA256()
    ec_sig = ec_key.sign(MESSAGE, ecdsa)
    rsa_sig = rsa_key.sign(MESSAGE, pkcs1, sha256)
    ec_pub, rsa_pub = ec_key.public_key(), rsa_key.public_key()
    return {
        "ES256 sign": lambda: ec_key.sign(MESSAGE, ecdsa),
        "ES256 verify": lambda: ec_pub.verify(ec_sig, MESSAGE, ecdsa),
        "RS256 sign": lambda: rsa_key.sign(MESSAGE, pkcs1, sha256),
        "RS256 verify": lambda: rsa_pub.verify(rsa_sig, MESSAGE, pkcs1, sha256),
    }


def best_seconds(fn: Callable[[], object], *, number: int = 500, repeat: int = 7) -> float:
    fn()
    return min(timeit.repeat(fn, number=number, repeat=repeat, timer=time.thread_time)) / number


def raw_costs(
    names: tuple[str, ...] = ("ES256 verify", "ES256 sign"),
    *,
    cpus: str = SERVER_CPUS,
    number: int = 500,
    repeat: int = 7,
) -> dict[str, float]:
    """Seconds per operation, measured on `cpus` (the server's core), then back to where we were."""
    ops = operations()
    saved = os.sched_getaffinity(0)
    if can_pin():
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    try:
        return {name: best_seconds(ops[name], number=number, repeat=repeat) for name in names}
    finally:
        os.sched_setaffinity(0, saved)
