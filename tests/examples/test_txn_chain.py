"""examples/txn_chain/README.md, run as written: client → exchange (txn_token) → ambassador → orders →
shipping over real HTTP, every process real. The README's two shell blocks are executed verbatim in a
copy of the example (only the port numbers are swapped for free ones), and every curl answer is
compared with the answer the README shows under it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "txn_chain"
PORTS = (8300, 8301, 8302, 8303, 8304)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def shell_blocks(readme: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", readme, flags=re.S)


def commands(block: str) -> list[str]:
    """The block's commands, backslash continuations joined, comments and blank lines dropped."""
    joined = block.replace("\\\n", " ")
    lines = [line.split("   #", 1)[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def expected_answers(block: str) -> list[Any]:
    """The JSON answers the README shows (comment lines right under a curl)."""
    return [json.loads(line[2:]) for line in block.splitlines() if line.startswith("# {")]


def same_shape(expected: Any, actual: Any, seen: dict[str, str]) -> bool:
    """Equal, where "<uuid>" is any string and "<same uuid>" the one <uuid> stood for."""
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(same_shape(expected[k], actual[k], seen) for k in expected)
        )
    if expected == "<uuid>":
        seen["uuid"] = actual
        return isinstance(actual, str) and len(actual) == 36
    if expected == "<same uuid>":
        return actual == seen.get("uuid")
    return bool(expected == actual)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[int], str]]:
    """The example copied into a scratch tree with the repo's .venv, started as the README says."""
    work = tmp_path_factory.mktemp("txn_chain")
    ports = free_ports(len(PORTS))
    copy = work / "examples" / "txn_chain"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("var", "__pycache__"))
    for path in copy.iterdir():
        if path.is_file():
            text = path.read_text()
            for old, new in zip(PORTS, ports, strict=True):
                text = text.replace(str(old), str(new))
            path.write_text(text)
    (work / ".venv").symlink_to(Path(sys.executable).parents[1])
    readme = (copy / "README.md").read_text()
    start, walk = shell_blocks(readme)[:2]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes: list[subprocess.Popen[bytes]] = []
    logs = work / "logs"
    logs.mkdir()
    try:
        for index, command in enumerate(commands(start)):
            if not command.endswith("&"):
                subprocess.run(["bash", "-c", command], cwd=work, env=env, check=True, timeout=60)
                continue
            with (logs / f"{index}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        shlex.split(command[:-1]),
                        cwd=work,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        health = ["/readyz", "/health", "/.ambassador/health", "/health", "/health"]
        deadline = time.monotonic() + 60
        for port, path in zip(ports, health, strict=True):
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    dump = "\n".join(f"{p.name}: {p.read_text()[-2000:]}" for p in sorted(logs.iterdir()))
                    raise RuntimeError(f"port {port} not ready:\n{dump}")
                time.sleep(0.2)
        yield work, ports, walk
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def test_the_walkthrough_runs_and_answers_as_written(chain: tuple[Path, list[int], str]) -> None:
    work, _, walk = chain
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walk], cwd=work, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    expected = expected_answers(walk)
    answers = [json.loads(line) for line in lines[: len(expected)]]
    seen: dict[str, str] = {}
    for want, got in zip(expected, answers, strict=True):
        assert same_shape(want, got, seen), (want, got)
    # Step 5: the audit trail holds the decisions, each Txn-Token decision with its transaction.
    audit = [json.loads(line) for line in lines[len(expected) :]]
    assert audit and all("txn" in record for record in audit)
    assert any(record["txn"] == seen["uuid"] and record["decision"] == "granted" for record in audit)


def test_the_chain_carries_one_transaction_end_to_end(chain: tuple[Path, list[int], str]) -> None:
    work, ports, _ = chain
    exchange, gateway, ambassador, _orders, shipping = ports
    token = subprocess.run(
        [".venv/bin/exchange", "dev-token", "--config", "examples/txn_chain/exchange.toml", "--sub", "bob",
         "--access-token", "--claim", "scope=orders"],
        cwd=work, capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    placed = httpx.post(
        f"http://127.0.0.1:{gateway}/orders",
        json={"item": "sku-7", "quantity": 3},
        headers={"Authorization": f"Bearer {token}"},
        timeout=20,
    )
    assert placed.status_code == 201, placed.text
    body = placed.json()
    assert body["for"] == "bob" and body["shipment"]["to"] == "bob"
    assert body["shipment"]["txn"] == body["txn"]  # one transaction across both services
    # The exchange recorded the decision under that transaction.
    listed = subprocess.run(
        [".venv/bin/exchange", "audit", "list", "--config", "examples/txn_chain/exchange.toml", "--json",
         "--txn", body["txn"]],
        cwd=work, capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    [record] = [json.loads(line) for line in listed.splitlines()]
    assert (record["decision"], record["client_id"], record["sub"]) == ("granted", "gateway", "bob")
    assert (record["purpose"], record["audience"]) == ("orders.place", "shop.internal")
    # A Txn-Token in the Authorization header is still no Txn-Token, at the ambassador or at shipping.
    for port, path in ((ambassador, "/orders"), (shipping, "/shipments")):
        refused = httpx.post(
            f"http://127.0.0.1:{port}{path}", json={"item": "sku-7", "quantity": 1}, timeout=10
        )
        assert (refused.status_code, refused.json()) == (403, {"error": "invalid_txn_token"})
    assert httpx.get(f"http://127.0.0.1:{exchange}/readyz", timeout=5).status_code == 200


def test_a_compromised_service_cannot_change_the_order(chain: tuple[Path, list[int], str]) -> None:
    """Shipping ships what tctx says: a caller holding a genuine Txn-Token cannot ship more."""
    import asyncio

    work, ports, _ = chain
    exchange, _, _, _, shipping = ports
    sys.path.insert(0, str(work / "examples" / "txn_chain"))
    try:
        import workload  # the example's module, from the copy
    finally:
        sys.path.pop(0)
    gateway = workload.Workload(
        "gateway", work / "examples" / "txn_chain" / "var" / "gateway.jwk.json",
        f"http://127.0.0.1:{exchange}", "shop.internal",
    )  # fmt: skip
    user = subprocess.run(
        [".venv/bin/exchange", "dev-token", "--config", "examples/txn_chain/exchange.toml", "--sub", "carol",
         "--access-token", "--claim", "scope=orders"],
        cwd=work, capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip

    async def ask() -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as http:
            return await gateway.txn_token(
                http, subject_token=user, scope="orders.place",
                request_details={"item": "sku-7", "quantity": 1}, request_context={"req_ip": "203.0.113.9"},
            )  # fmt: skip

    answer = asyncio.run(ask())
    assert answer.status_code == 200, answer.text
    txn_token = answer.json()["access_token"]
    headers = {"Txn-Token": txn_token}
    tampered = httpx.post(f"http://127.0.0.1:{shipping}/shipments", json={"item": "sku-7", "quantity": 50},
                          headers=headers, timeout=10)  # fmt: skip
    assert (tampered.status_code, tampered.json()) == (403, {"error": "shipment_differs_from_transaction"})
    honest = httpx.post(f"http://127.0.0.1:{shipping}/shipments", json={"item": "sku-7", "quantity": 1},
                        headers=headers, timeout=10)  # fmt: skip
    assert honest.status_code == 201 and honest.json()["to"] == "carol"
