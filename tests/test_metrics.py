"""Metrics: the exposition parses with Prometheus' own parser, counts what happened, keeps label values
to configured sets, and adds up across worker processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exchange.metrics import Registry, merge, render
from tests.conftest import exchange_form, write_config
from tests.idp import FakeIdP
from tests.server import Server, free_port


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels: value}, parsed by prometheus_client (so the format itself is checked)."""
    resp = httpx.get(url, timeout=5)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    """The sum of `name` over the series matching `labels` (0 when none does)."""
    return sum(
        v
        for key, v in samples.get(name, {}).items()
        if all(dict(key).get(k) == want for k, want in labels.items())
    )


class TestRegistry:
    def test_histogram_buckets_are_cumulative_and_le_is_inclusive(self) -> None:
        r = Registry()
        h = r.histogram("t_seconds", "test", ("step",), buckets=(0.1, 1.0)).child(("a",))
        for v in (0.05, 0.1, 0.5, 1.0, 3.0):
            h.observe(v)
        text = render(merge([r.snapshot(1)], alive=lambda _: True)).decode()
        (family,) = text_string_to_metric_families(text)
        got = {(s.name, s.labels.get("le")): s.value for s in family.samples}
        assert got[("t_seconds_bucket", "0.1")] == 2
        assert got[("t_seconds_bucket", "1.0")] == 4
        assert got[("t_seconds_bucket", "+Inf")] == 5
        assert got[("t_seconds_count", None)] == 5
        assert got[("t_seconds_sum", None)] == pytest.approx(4.65)

    def test_label_values_are_escaped(self) -> None:
        r = Registry()
        r.counter("t_total", "test", ("who",)).inc(('a "quoted"\\ \nname',))
        (family,) = text_string_to_metric_families(
            render(merge([r.snapshot(1)], alive=lambda _: True)).decode()
        )
        assert family.samples[0].labels == {"who": 'a "quoted"\\ \nname'}

    def test_counters_add_up_across_processes_and_a_dead_ones_still_count(self) -> None:
        def worker(pid: int, n: int, depth: float) -> Registry:
            r = Registry()
            r.counter("c_total", "c", ("k",)).inc(("x",), n)
            r.histogram("h_seconds", "h", buckets=(1.0,)).child().observe(0.5)
            r.gauge("g", "g").set((), depth)
            r.gauge("m", "m", merge="max").set((), depth)
            r.gauge("p", "p", merge="pid").set((), depth)
            return r

        snaps = [
            worker(1, 3, 5.0).snapshot(1),
            worker(2, 4, 7.0).snapshot(2),
            worker(3, 10, 100.0).snapshot(3),
        ]
        families = {f.name: f for f in merge(snaps, alive=lambda pid: pid != 3)}
        assert families["c_total"].series[0].value == 17  # the dead worker's counts stay in the total
        assert families["h_seconds"].series[0].counts == [3, 0]
        assert families["g"].series[0].value == 12  # read values of the dead worker are dropped
        assert families["m"].series[0].value == 7
        assert sorted((s.labels, s.value) for s in families["p"].series) == [(["1"], 5.0), (["2"], 7.0)]


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory, idp: FakeIdP, idp_ec: FakeIdP) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("metered")
    port = free_port()
    srv = Server(write_config(folder, port, idp, idp_ec), port)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


class TestServedMetrics:
    def test_exchanges_are_counted_by_purpose_client_and_outcome(self, metered: Server, idp: FakeIdP) -> None:
        token = f"{metered.url}/token"
        before = scrape(f"{metered.url}/metrics")
        assert httpx.post(token, data=exchange_form(idp.token())).status_code == 200
        no_mfa = httpx.post(token, data=exchange_form(idp.token(amr=["pwd"])))
        assert no_mfa.status_code == 400
        denial = no_mfa.json()["denial"]
        assert httpx.post(token, data=exchange_form(idp.token(), client_id="made-up-1")).status_code == 401
        assert httpx.post(token, data=exchange_form(idp.token(), client_id="made-up-2")).status_code == 401
        assert httpx.post(token, data=exchange_form(idp.token(), scope="no.such.purpose")).status_code == 400
        after = scrape(f"{metered.url}/metrics")

        def delta(**labels: str) -> float:
            name = "purpose_exchange_exchanges_total"
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta(purpose="payments.approve", client="bank-web", outcome="granted") == 1
        assert (
            delta(purpose="payments.approve", client="bank-web", outcome="invalid_request", denial=denial)
            == 1
        )
        # Names a caller makes up never become label values: they collapse into one.
        assert delta(client="(unknown)", outcome="invalid_client") == 2
        assert delta(purpose="(unknown)", client="bank-web", outcome="invalid_scope") == 1
        clients = {dict(k)["client"] for k in after["purpose_exchange_exchanges_total"]}
        assert "made-up-1" not in clients and "made-up-2" not in clients

    def test_every_step_has_a_latency_histogram(self, metered: Server, idp: FakeIdP) -> None:
        before = scrape(f"{metered.url}/metrics")
        assert httpx.post(f"{metered.url}/token", data=exchange_form(idp.token())).status_code == 200
        after = scrape(f"{metered.url}/metrics")
        name = "purpose_exchange_step_duration_seconds_count"
        for step in ("client_auth", "trust", "rules", "mint", "audit"):
            assert value(after, name, step=step) - value(before, name, step=step) == 1, step
        total = "purpose_exchange_exchange_duration_seconds_count"
        assert value(after, total, decision="granted") - value(before, total, decision="granted") == 1
        # The steps of a granted exchange take part of its whole time, never more.
        step_sum = sum(
            value(after, "purpose_exchange_step_duration_seconds_sum", step=s)
            - value(before, "purpose_exchange_step_duration_seconds_sum", step=s)
            for s in ("client_auth", "trust", "rules", "mint", "audit")
        )
        whole = value(after, "purpose_exchange_exchange_duration_seconds_sum", decision="granted") - value(
            before, "purpose_exchange_exchange_duration_seconds_sum", decision="granted"
        )
        assert 0 < step_sum <= whole

    def test_audit_batches_keys_and_process_are_reported(self, metered: Server, idp: FakeIdP) -> None:
        assert httpx.post(f"{metered.url}/token", data=exchange_form(idp.token())).status_code == 200
        samples = scrape(f"{metered.url}/metrics")
        assert value(samples, "purpose_exchange_audit_batch_size_count") >= 1
        assert "purpose_exchange_audit_queue_depth" in samples
        ages = samples["purpose_exchange_signing_key_age_seconds"]
        assert [dict(k)["state"] for k in ages] == ["current"]
        assert all(age >= 0 for age in ages.values())
        assert value(samples, "process_resident_memory_bytes") > 1_000_000
        assert value(samples, "process_cpu_seconds_total") > 0
        assert value(samples, "purpose_exchange_build_info") == 1


def wait_for(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def test_two_workers_report_one_total(tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP) -> None:
    port = free_port()
    srv = Server(write_config(tmp_path, port, idp, idp_ec), port, args=("--workers", "2"))
    try:
        srv.wait_ready()
        with httpx.Client(timeout=10) as http:  # new connections spread over both workers
            for _ in range(12):
                assert (
                    http.post(
                        f"{srv.url}/token", data=exchange_form(idp.token()), headers={"Connection": "close"}
                    ).status_code
                    == 200
                )

        def counted() -> bool:
            samples = scrape(f"{srv.url}/metrics")
            return value(samples, "purpose_exchange_exchanges_total", outcome="granted") == 12

        wait_for(counted)
        pids = {dict(k)["pid"] for k in scrape(f"{srv.url}/metrics")["process_resident_memory_bytes"]}
        assert len(pids) == 2
    finally:
        srv.stop()


def test_metrics_on_a_management_port_only(tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP) -> None:
    port, management = free_port(), free_port()
    config = write_config(
        tmp_path, port, idp, idp_ec, extra=f'\n[metrics]\nlisten = "127.0.0.1:{management}"\n'
    )
    srv = Server(config, port)
    try:
        srv.wait_ready()
        assert httpx.get(f"{srv.url}/metrics").status_code == 404  # not exposed with the service
        assert httpx.post(f"{srv.url}/token", data=exchange_form(idp.token())).status_code == 200

        def counted() -> bool:
            samples = scrape(f"http://127.0.0.1:{management}/metrics")
            return value(samples, "purpose_exchange_exchanges_total", outcome="granted") == 1

        wait_for(counted)
    finally:
        srv.stop()


def test_the_grafana_dashboard_uses_only_metrics_the_server_exposes(metered: Server) -> None:
    import json
    import re

    dashboard = json.loads((Path(__file__).parents[1] / "deploy" / "grafana-dashboard.json").read_text())
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(?:purpose_exchange|process)_[a-z_]+", target["expr"])
    }
    assert used
    exposed = {
        family.name for family in text_string_to_metric_families(httpx.get(f"{metered.url}/metrics").text)
    }
    # prometheus_client names counter families without their _total suffix.
    exposed |= {f"{name}_total" for name in exposed}
    assert used <= exposed, used - exposed


def _outside_address() -> str:
    """This machine's address on its outward interface: a peer that is not loopback (no packet is sent)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: the route is looked up, nothing is sent
        address = str(probe.getsockname()[0])
    assert not address.startswith("127."), address
    return address


def test_the_service_port_shows_metrics_to_this_machine_only(
    tmp_path: Path, idp: FakeIdP, idp_ec: FakeIdP
) -> None:
    # Red team round 2: the series name every configured client id and purpose, and how busy each is;
    # behind a public proxy (deploy/nginx.conf passed every path) anyone could read the roster.
    port = free_port()
    srv = Server(write_config(tmp_path, port, idp, idp_ec), port, args=("--host", "0.0.0.0"))
    try:
        srv.wait_ready()
        outside = f"http://{_outside_address()}:{port}"
        assert httpx.get(f"{outside}/healthz").status_code == 200  # the same server, reached from outside
        answer = httpx.get(f"{outside}/metrics")
        assert answer.status_code == 404 and "client" not in answer.text
        loaded = value(scrape(f"{srv.url}/metrics"), "purpose_exchange_config_last_reload_timestamp_seconds")
        assert loaded > 0
        # A proxy on this machine forwarding a stranger's request is a loopback peer too: its forwarding
        # header gives it away.
        for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
            forwarded = httpx.get(f"{srv.url}/metrics", headers={header: "203.0.113.7"})
            assert forwarded.status_code == 404, header
    finally:
        srv.stop()
