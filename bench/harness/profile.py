"""py-spy over a running server (or a command), and what its samples say.

Two sampling modes, collapsed-stack output either way:
- `gil`: `py-spy record --gil`, only samples of a thread holding the GIL: the Python work. Time in C
  or Rust code that keeps the GIL is charged to the Python frame that called it; code that releases
  it is not seen at all, and pyca/cryptography releases the GIL in its signature operations (two
  threads verify ES256 at 1.7x the rate of one here), so the raw crypto is absent from these samples.
- `cpu`: py-spy's default, samples of threads on a CPU (idle threads are dropped), GIL or not: the raw
  signature operations show up, charged to the frame that called them.
`summarise` groups the samples two ways:

- by step of the request: each sample goes to the deepest frame of its stack that belongs to a
  step's module (so joserfc under trust.py counts as subject-token work, under tokens.py as minting);
- by module: the module of the leaf frame (self time).

The grouping reads file paths in frame names, not the service's internals, so it survives refactors:
code moving between modules moves between lines of the table.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from harness.procs import BIN, LOAD_CPUS, pin

# (label, test on one frame "function (path)"): the deepest frame matching any rule names the step.
STEPS: list[tuple[str, Callable[[str], bool]]] = [
    ("audit: JSON log line (structlog)", lambda f: "structlog/" in f or "exchange/logging.py" in f),
    (
        "audit: store write (exchange/store, asyncpg, sqlite3)",
        lambda f: any(n in f for n in ("exchange/store/", "asyncpg/", "sqlite3/")),
    ),
    ("audit: record and group commit (audit.py)", lambda f: "exchange/audit.py" in f),
    (
        "mint: claims, JSON, signature (tokens.py, keys.py)",
        lambda f: any(n in f for n in ("exchange/tokens.py", "exchange/keys.py")),
    ),
    ("rules (rules/)", lambda f: "(rules/" in f),
    (
        "subject token: parse, key, signature, claims (trust.py, exchange/verify)",
        lambda f: any(n in f for n in ("exchange/trust.py", "exchange/verify/")),
    ),
    ("client authentication (clients.py)", lambda f: "exchange/clients.py" in f),
    ("form parsing (parse_form, urllib.parse)", lambda f: f.startswith("parse_form (")),
    ("orchestration (service.py)", lambda f: "exchange/service.py" in f),
    ("records and wire structs (schemas/)", lambda f: "(schemas/" in f),
    (
        "/token handler: headers, body, response (endpoint.py, app.py)",
        lambda f: "exchange/endpoint.py" in f or "exchange/app.py" in f,
    ),
    # The launch frames are left out: `exchange serve` runs granian in-process, so they are under everything.
    (
        "other service code (exchange/)",
        lambda f: "(exchange/" in f and not any(n in f for n in ("(exchange/cli/", "(exchange/launcher.py")),
    ),
    ("litestar (routing, middleware, other routes)", lambda f: "litestar/" in f),
]
LEFTOVER = "event loop and server glue (asyncio, granian)"
# Leaves that are a thread waiting, though py-spy saw it as running: left out of every share.
IDLE_LEAVES = (
    "Condition.wait (threading.py)",
    "EpollSelector.select (selectors.py)",
    "select (selectors.py)",
    "_worker (concurrent/futures/thread.py)",  # an executor thread blocked on its queue (a C call)
)
# A leaf in one of these is (almost all) the C signature call it wraps.
_SIGNATURE_LEAF = re.compile(r"^_?(sign|verify)")


def ensure_py_spy() -> str:
    """py-spy's path; installs it from PyPI into the venv when missing."""
    found = shutil.which("py-spy") or (str(BIN / "py-spy") if (BIN / "py-spy").exists() else None)
    if found:
        return found
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True, timeout=600)
    return str(BIN / "py-spy")


def record_argv(out: Path, seconds: float, *, mode: str = "gil", rate: int = 100) -> list[str]:
    return [
        *pin(LOAD_CPUS),
        ensure_py_spy(),
        "record",
        *(["--gil"] if mode == "gil" else []),
        "--nolineno",
        "--rate",
        str(rate),
        "--duration",
        str(max(1, int(seconds))),
        "--format",
        "raw",
        "--output",
        str(out),
    ]


def attach(pid: int, out: Path, seconds: float, *, mode: str = "gil") -> subprocess.Popen[bytes]:
    """Start sampling a running server's process tree (granian's worker is a child) for `seconds`."""
    argv = [*record_argv(out, seconds, mode=mode), "--subprocesses", "--pid", str(pid)]
    print(f"# profiling: {shlex.join(argv)}", flush=True)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _short(frame: str) -> str:
    """Absolute paths cut down to the package path: `verify (exchange/verify/verifier.py)`."""
    frame = re.sub(r"\((?:[^()]*?/(?:site-packages|dist-packages|lib/python3\.\d+)/)", "(", frame)
    return re.sub(r"\((?:[^()]*?/)((?:exchange|rules|schemas|bench|tests)/)", r"(\1", frame)


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            frames = [_short(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            stacks.append((frames, int(n)))
    return stacks


def step_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for label, test in STEPS:
            if test(frame):
                return label
    return LEFTOVER


def module_of(frame: str) -> str:
    m = re.search(r"\(([^()]*)\)$", frame)
    path = m.group(1) if m else frame
    if path.startswith(("exchange/verify/", "exchange/store/", "exchange/cli/")):
        return "/".join(path.split("/")[:2]) + "/"
    if path.startswith(("exchange/", "bench/")):
        return path
    if path.startswith(("rules/", "schemas/")):
        return path.split("/")[0] + "/"
    head = path.split("/")[0]
    return head.removesuffix(".py") if head else path


def summarise(path: Path, *, top: int = 12, steps: bool = True, within: str | None = None) -> str:
    """A text summary: shares by step (if `steps`), by leaf module, and the top leaf functions;
    `within`: only the stacks with a frame containing that text (a loop, not its set-up)."""
    stacks = load(path)
    if within is not None:
        stacks = [(frames, n) for frames, n in stacks if any(within in f for f in frames)]
    idle = sum(n for frames, n in stacks if frames and frames[-1] in IDLE_LEAVES)
    stacks = [(frames, n) for frames, n in stacks if frames and frames[-1] not in IDLE_LEAVES]
    total = sum(n for _, n in stacks)
    if not total:
        return "(no samples)"
    by_step: Counter[str] = Counter()
    by_module: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    signature = 0
    for frames, n in stacks:
        if not frames:
            continue
        by_step[step_of(frames)] += n
        by_module[module_of(frames[-1])] += n
        leaves[frames[-1]] += n
        if _SIGNATURE_LEAF.match(frames[-1].split(" (")[0].split(".")[-1]) and any(
            k in frames[-1] for k in ("joserfc/_rfc7518", "exchange/verify/", "exchange/tokens.py", "bench/")
        ):
            signature += n
    out = [f"{total} samples (and {idle} of idle waits left out: {', '.join(IDLE_LEAVES)})"]
    if steps:
        out.append("by step of the request (deepest frame in a step's module):")
        out += [f"  {100 * n / total:5.1f}%  {label}" for label, n in by_step.most_common()]
        out.append(
            f"  (of all samples, {100 * signature / total:.1f}% have a sign/verify wrapper of the C "
            "signature call as leaf: the raw crypto, roughly)"
        )
    out.append("by module of the leaf frame (self time):")
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_module.most_common(top)]
    out.append(f"top {top} leaf functions:")
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in leaves.most_common(top)]
    return "\n".join(out)
