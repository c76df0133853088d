"""Health: GET /healthz and `manage.py healthcheck` (one set of checks), and runworker
--health-port (one worker's liveness), against a real engine, workers and database."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from cleanups.durable.ops import open_ops_servers
from cleanups.durable.reconciler import Reconciler
from cleanups.health import WorkerLiveness, run_checks
from cleanups.models import CleanupRun, CleanupSchedule, WorkerHeartbeat
from cleanups.runs.worker import worker_id
from tests.conftest import database_url, free_port, manage, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
READY = "Press Ctrl+C to stop"
CHECKS = ("database", "engine", "workers", "recovering", "stuck_runs", "backlog")
ALL_OK = {"status": "ok", "checks": dict.fromkeys(CHECKS, "ok")}


def healthz(client: Any, verbose: bool = False) -> tuple[int, dict[str, Any]]:
    response = client.get(reverse("cleanups:healthz") + ("?verbose=1" if verbose else ""))
    assert response["Content-Type"] == "application/json"
    assert "no-store" in response["Cache-Control"]
    return response.status_code, response.json()


def beat() -> None:
    """A runworker's heartbeat, as its reconciler writes it each pass."""
    Reconciler(worker_id(), 5.0).beat()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def answered(url: str, status: int, timeout: float = 10) -> str:
    """The body of the first answer with ``status``, asking until one comes."""
    return wait_until(lambda: (answer := get(url))[0] == status and answer[1], timeout=timeout)


def failing(payload: dict[str, Any]) -> set[str]:
    return {name for name, status in payload["checks"].items() if status != "ok"}


# 1. GET /healthz ------------------------------------------------------------------------------


def test_healthz_is_ok_with_the_engine_and_a_worker_and_says_nothing_more(engine, client):
    beat()
    status, payload = healthz(client)
    assert (status, payload) == (200, ALL_OK)
    # Anyone may ask for details; only staff get them.
    assert healthz(client, verbose=True) == (200, ALL_OK)


def test_healthz_is_503_naming_the_engine_check_once_the_engine_stops(engine, client):
    beat()
    assert healthz(client)[0] == 200
    engine.stop(grace=0)

    status, payload = healthz(client)
    assert status == 503
    assert payload == {"status": "failing", "checks": {**ALL_OK["checks"], "engine": "failing"}}


def test_only_staff_who_may_view_schedules_see_the_reasons(
    engine, client, admin_client, django_user_model
):
    beat()
    status, payload = healthz(admin_client, verbose=True)
    assert status == 200
    assert set(payload["reasons"]) == set(CHECKS)
    assert "answered in" in payload["reasons"]["engine"]
    assert "heartbeat is" in payload["reasons"]["workers"]
    assert "reasons" not in healthz(admin_client)[1]  # only when asked

    staff = django_user_model.objects.create_user("plain-staff", password="pw", is_staff=True)
    client.force_login(staff)
    assert "reasons" not in healthz(client, verbose=True)[1]
    staff.user_permissions.add(Permission.objects.get(codename="view_cleanupschedule"))
    assert "reasons" in healthz(client, verbose=True)[1]

    engine.stop(grace=0)
    status, payload = healthz(admin_client, verbose=True)
    assert status == 503
    assert "cannot be reached" in payload["reasons"]["engine"]
    assert healthz(client.__class__(), verbose=True)[1] == {
        "status": "failing",
        "checks": {**ALL_OK["checks"], "engine": "failing"},
    }


def test_a_run_running_longer_than_the_limit_fails_the_health(
    engine, client, admin_client, make_schedule, settings
):
    beat()
    schedule = make_schedule(name="nightly-sessions")
    now = timezone.now()
    CleanupRun.objects.create(
        schedule=schedule, iteration=1, task="sample", started_at=now - timedelta(seconds=30)
    )
    assert healthz(client)[0] == 200  # running, not for long

    CleanupRun.objects.create(
        schedule=schedule, iteration=2, task="sample", started_at=now - timedelta(seconds=700)
    )
    status, payload = healthz(admin_client, verbose=True)
    assert status == 503
    assert failing(payload) == {"stuck_runs"}
    assert payload["reasons"]["stuck_runs"] == (
        "running longer than 600 s (HEALTH_STUCK_SECONDS): nightly-sessions #2"
    )

    settings.HEALTH_STUCK_SECONDS = 3600
    assert healthz(client)[0] == 200
    settings.HEALTH_STUCK_SECONDS = 0  # off
    assert healthz(client)[0] == 200
    settings.HEALTH_STUCK_SECONDS = 600
    CleanupRun.objects.filter(schedule=schedule, iteration=2).update(status="interrupted")
    assert healthz(client)[0] == 200  # a run that ended is not stuck


def test_a_recovering_schedule_fails_the_health(engine, admin_client, make_schedule):
    beat()
    make_schedule(name="broken", recovering_since=timezone.now())
    status, payload = healthz(admin_client, verbose=True)
    assert status == 503
    assert failing(payload) == {"recovering"}
    assert payload["reasons"]["recovering"].endswith(": broken")

    CleanupSchedule.objects.update(recovering_since=None)
    assert healthz(admin_client)[0] == 200


def test_the_workers_check_wants_a_heartbeat_younger_than_two_reconcile_intervals(
    engine, admin_client, settings
):
    settings.RECONCILE_INTERVAL = 5.0
    status, payload = healthz(admin_client, verbose=True)
    assert (status, failing(payload)) == (503, {"workers"})
    assert payload["reasons"]["workers"] == "no runworker has a heartbeat: is one running?"

    beat()
    assert healthz(admin_client)[0] == 200
    WorkerHeartbeat.objects.update(last_seen=timezone.now() - timedelta(seconds=11))
    status, payload = healthz(admin_client, verbose=True)
    assert (status, failing(payload)) == (503, {"workers"})
    assert "limit 10 s" in payload["reasons"]["workers"]
    settings.RECONCILE_INTERVAL = 6.0  # two intervals: 12 s
    assert healthz(admin_client)[0] == 200


@pytest.mark.subprocess
def test_healthz_follows_a_real_runworker_up_and_down(start_worker_process, client):
    worker = start_worker_process()
    worker.wait_for_output(READY)
    # It hosts the engine, and beats every pass: both checks agree soon after it is ready.
    wait_until(lambda: healthz(client)[0] == 200, timeout=20)
    assert healthz(client) == (200, ALL_OK)

    assert worker.stop() == 0, worker.output
    status, payload = healthz(client)
    assert status == 503
    # Its engine is gone, and a clean stop takes its heartbeat with it.
    assert failing(payload) == {"engine", "workers"}


# 2. manage.py healthcheck ---------------------------------------------------------------------


def healthcheck(engine_port: int, *args: str, **env: str) -> Any:
    return manage(
        "healthcheck",
        *args,
        DEBUG="true",
        DATABASE_URL=env.pop("DATABASE_URL", database_url()),
        ENDPOINT="",
        EMBEDDED_ENGINE_PORT=str(engine_port),
        **env,
    )


@pytest.mark.subprocess
def test_healthcheck_exits_0_when_all_is_well_and_prints_a_table(engine, engine_port):
    beat()
    result = healthcheck(engine_port)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [[name, "ok"] for name in CHECKS]
    assert lines[-1] == "status: ok"
    assert result.stderr == ""


@pytest.mark.subprocess
def test_healthcheck_json_with_the_engine_stopped_exits_1_without_a_traceback(engine, engine_port):
    beat()
    engine.stop(grace=0)
    result = healthcheck(engine_port, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    payload = json.loads(result.stdout)
    assert payload["status"] == "failing"
    assert payload["checks"] == {**ALL_OK["checks"], "engine": "failing"}
    assert f"127.0.0.1:{engine_port}" in payload["reasons"]["engine"]
    assert "cannot be reached" in payload["reasons"]["engine"]


@pytest.mark.subprocess
def test_healthcheck_with_an_unreachable_database_is_a_failing_check(engine_port, tmp_path):
    missing = tmp_path / "no-such-directory" / "db.sqlite3"
    result = healthcheck(engine_port, "--json", DATABASE_URL=f"sqlite:///{missing}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    payload = json.loads(result.stdout)
    assert payload["checks"] == dict.fromkeys(CHECKS, "failing")  # no engine on the port either
    assert payload["reasons"]["database"].startswith("the database cannot be reached")
    assert payload["reasons"]["workers"] == "not checked: the database cannot be reached"


def test_healthcheck_runs_the_same_checks_as_healthz(engine, client, capsys):
    beat()
    engine.stop(grace=0)
    with pytest.raises(SystemExit) as exited:
        call_command("healthcheck", "--json")
    assert exited.value.code == 1
    printed = json.loads(capsys.readouterr().out)
    assert {k: printed[k] for k in ("status", "checks")} == healthz(client)[1]
    assert printed["checks"] == run_checks().as_dict()["checks"]


# 3. runworker --health-port: this worker's liveness -------------------------------------------


@pytest.mark.subprocess
def test_runworker_health_port_reports_its_liveness_and_serves_metrics_on_the_same_port(
    start_worker_process,
):
    port = free_port()
    worker = start_worker_process(
        "--health-port", str(port), "--metrics-port", str(port), "--reconcile-interval", "1"
    )
    worker.wait_for_output(READY)
    assert f"Serving /healthz and /metrics on http://127.0.0.1:{port}" in worker.output
    url = f"http://127.0.0.1:{port}"
    assert json.loads(answered(f"{url}/healthz", 200, timeout=20)) == {
        "status": "ok",
        "checks": {"stream": "ok", "reconciler": "ok"},
    }
    reasons = json.loads(get(f"{url}/healthz?verbose=1")[1])["reasons"]
    assert reasons["stream"] == "the worker's work-item stream to the engine is open"
    assert "(limit 2 s, two reconcile intervals)" in reasons["reconciler"]
    status, body = get(f"{url}/metrics")
    assert status == 200
    assert "cleanups_worker_stream_connected 1.0" in body
    assert get(f"{url}/nothing")[0] == 404

    assert worker.stop() == 0, worker.output
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # stopped with the worker


def test_liveness_fails_when_the_stream_drops_or_the_reconciler_stops_passing(engine, worker):
    host = SimpleNamespace(worker=worker, reconciler=Reconciler(worker_id(), 60.0))
    port = free_port()
    ops = open_ops_servers(host, "127.0.0.1", port, None)
    url = f"http://127.0.0.1:{port}/healthz?verbose=1"
    try:
        host.reconciler.tick()
        answered(url, 200)  # its stream connected, and a pass ended within two minutes
        assert get(f"http://127.0.0.1:{port}/metrics")[0] == 404  # not asked for

        # Passes due every 0.25 s, and none for two of those: a hung reconciler.
        host.reconciler.interval = 0.25
        payload = json.loads(answered(url, 503))
        assert payload["checks"] == {"stream": "ok", "reconciler": "failing"}
        assert payload["reasons"]["reconciler"].startswith("the last pass ended")

        host.reconciler.interval = 60.0
        assert get(url)[0] == 200
        engine.stop(grace=0)
        assert json.loads(answered(url, 503))["checks"] == {"stream": "failing", "reconciler": "ok"}
    finally:
        ops.close()


def test_liveness_before_the_worker_started_is_failing(engine):
    liveness = WorkerLiveness(SimpleNamespace(worker=None, reconciler=SimpleNamespace(interval=1)))
    assert liveness.stream().reason == "the worker has not started yet"
    assert not liveness.report().ok


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--health-port", "0"], "argument --health-port: must be between 1 and 65535, not 0"),
        (["--health-port", "http"], "argument --health-port: must be a port number, not 'http'"),
        (
            ["--health-port", "9", "--ops-host", "no-such-host.invalid"],
            "cannot listen on no-such-host.invalid:9 for --health-port: 'no-such-host.invalid' "
            "is not an address of this machine",
        ),
    ],
    ids=["zero", "not-a-number", "unknown-host"],
)
def test_a_bad_health_port_is_one_line(start_worker_process, args, message):
    worker = start_worker_process(*args)
    assert worker.process.wait(timeout=30) != 0
    worker._reader.join(timeout=5)
    assert "Traceback" not in worker.output, worker.output
    assert len([line for line in worker.lines if message in line]) == 1, worker.output
    assert READY not in worker.output
