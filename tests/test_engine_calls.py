"""Engine calls counted by the client-side interceptor (cleanups.engine.counting): against the
counts the real engine keeps of what it served, in the web process's /metrics and the worker's
exposition, and with the outcome of a call to an engine that is not there."""

from __future__ import annotations

from collections import Counter

import grpc
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from cleanups import instances
from cleanups.engine.config import engine_config
from cleanups.engine.connection import build_client, build_worker
from cleanups.engine.counting import outcome_of, short_method
from cleanups.metrics import worker_exposition
from tests.conftest import free_port, wait_until
from tests.test_metrics import parse, scrape

FAMILY = "cleanups_engine_requests"
METRIC = f"{FAMILY}_total"
SERVED = ("GetInstance", "QueryInstances")


def counted(method: str, outcome: str = "ok") -> float:
    """This process's count so far (the counter lives as long as the process)."""
    value = REGISTRY.get_sample_value(METRIC, {"method": method, "outcome": outcome})
    return value or 0.0


def counts(*methods: str) -> Counter[str]:
    return Counter({method: counted(method) for method in methods})


def test_the_client_counts_what_the_engine_served(engine, durable_client):
    before, served = counts(*SERVED, "StartInstance"), Counter(engine.calls)
    for n in range(3):
        instances.state_of_instance(f"nobody-{n}")
    instances.fetch_runtime_states()
    instances.runtime_states(["nobody-1", "nobody-2"])
    durable_client.schedule_new_orchestration("not-registered", instance_id="counted-start")

    client_side = counts(*SERVED, "StartInstance") - before
    assert client_side["StartInstance"] == 1
    server_side = Counter(engine.calls) - served
    assert {m: client_side[m] for m in SERVED} == {m: server_side[m] for m in SERVED}
    assert client_side["GetInstance"] >= 3 and client_side["QueryInstances"] >= 1


@pytest.mark.django_db(transaction=True)
def test_the_workers_channel_counts_its_stream_once_and_what_it_completes(engine, durable_client):
    opened, completed = counted("GetWorkItems"), counted("CompleteOrchestratorTask")

    def noop(ctx, _):
        return "done"

    dt_worker = build_worker(engine_config())
    dt_worker.add_orchestrator(noop)
    dt_worker.start()
    try:
        instance_id = durable_client.schedule_new_orchestration(noop)
        state = durable_client.wait_for_orchestration_completion(instance_id, timeout=20)
        assert state is not None and state.serialized_output == '"done"'
        wait_until(lambda: counted("CompleteOrchestratorTask") > completed)
    finally:
        dt_worker.stop()
    # One stream for the worker's whole life, whatever it was sent on it.
    assert counted("GetWorkItems") == opened + 1
    assert counted("Hello") >= 1


def test_a_call_to_an_engine_that_is_not_there_counts_its_status(settings):
    settings.ENDPOINT = ""
    settings.EMBEDDED_ENGINE_PORT = str(free_port())  # nothing listens on it
    before = counted("GetInstance", "unavailable")
    client = build_client(engine_config(), call_timeout=2.0)
    try:
        with pytest.raises(grpc.RpcError) as raised:
            client.get_orchestration_state("nobody")
    finally:
        client.close()
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert counted("GetInstance", "unavailable") == before + 1


@pytest.mark.django_db(transaction=True)
def test_web_metrics_show_this_process_calls_including_the_scrapes_own_probe(engine, admin_client):
    instances.state_of_instance("nobody")
    response = scrape(admin_client)
    assert response.status_code == 200
    text = response.content.decode()
    samples = parse(text)
    shown = samples[(METRIC, frozenset({"method": "GetInstance", "outcome": "ok"}.items()))]
    # The scrape's engine probe (cleanups_engine_up) is a GetInstance, counted before it shows.
    assert shown == counted("GetInstance") >= 2
    family = next(f for f in text_string_to_metric_families(text) if f.name == FAMILY)
    assert family.type == "counter"


def test_the_worker_exposition_serves_the_same_counter(engine):
    instances.state_of_instance("nobody")
    samples = parse(worker_exposition()[0].decode())
    key = (METRIC, frozenset({"method": "GetInstance", "outcome": "ok"}.items()))
    assert samples[key] == counted("GetInstance") >= 1


def test_names_and_outcomes():
    assert short_method("/TaskHubSidecarService/GetWorkItems") == "GetWorkItems"
    assert short_method(b"/TaskHubSidecarService/Hello") == "Hello"
    assert outcome_of(None) == "ok"
    assert outcome_of(ValueError("Cannot invoke RPC on closed channel!")) == "unknown"
