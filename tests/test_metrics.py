"""Metrics: the web process's /metrics (the fleet's state from the database and the engine) and
each runworker's --metrics-port (its own run counters and histograms), checked against the run
records on a real engine, workers and database."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from cleanups import control, metrics
from cleanups.durable.reconciler import Reconciler
from cleanups.models import CleanupRun, CleanupSchedule, WorkerHeartbeat
from cleanups.runs.worker import worker_id
from tests.conftest import free_port, is_live, wait_until
from tests.testapp.models import Event

pytestmark = pytest.mark.django_db(transaction=True)
READY = "Press Ctrl+C to stop"
RUNNING = CleanupSchedule.DesiredState.RUNNING
FINISHED = ("succeeded", "failed", "timed_out", "skipped")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def matching(samples: Samples, name: str, **labels: str) -> dict[frozenset, float]:
    """The samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {key[1]: v for key, v in samples.items() if key[0] == name and wanted <= key[1]}


def scrape(client: Any, **headers: str) -> Any:
    return client.get(reverse("cleanups:metrics"), headers=headers)


def web_samples(client: Any) -> Samples:
    response = scrape(client)
    assert response.status_code == 200, response.content
    return parse(response.content.decode())


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def unique(prefix: str) -> str:
    """A schedule name no other test in this process used: the worker-side counters live as long
    as the process."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def finished_runs(schedule: CleanupSchedule) -> list[CleanupRun]:
    return list(CleanupRun.objects.filter(schedule=schedule, status__in=FINISHED))


def done(schedule: CleanupSchedule, runs: int) -> bool:
    """Its iteration limit reached: ``runs`` outcomes recorded and the schedule stopped."""
    schedule.refresh_from_db()
    return schedule.desired_state == "stopped" and len(finished_runs(schedule)) >= runs


def assert_counters_match_the_records(samples: Samples, schedules: list[CleanupSchedule]) -> None:
    """cleanups_runs_total and the deletion counters, against the CleanupRun rows."""
    for schedule in schedules:
        rows = finished_runs(schedule)
        expected = Counter((run.task, run.status, run.trigger) for run in rows)
        counted = {
            (labels["task"], labels["status"], labels["trigger"]): v
            for labels, v in (
                (dict(key), v)
                for key, v in matching(
                    samples, "cleanups_runs_total", schedule=schedule.name
                ).items()
            )
        }
        assert counted == dict(expected), schedule.name

        deleted: Counter[str] = Counter()
        freed = 0
        for run in rows:
            if run.dry_run:
                continue
            for target, counts in run.details.get("targets", {}).items():
                deleted[target] += counts.get("items", 0)
                freed += counts.get("bytes", 0)
        counted_items = {
            dict(key)["target"]: v
            for key, v in matching(
                samples, "cleanups_items_deleted_total", schedule=schedule.name
            ).items()
        }
        assert counted_items == {t: n for t, n in deleted.items() if n}, schedule.name
        assert sum(counted_items.values()) == sum(r.items_deleted for r in rows if not r.dry_run)
        # (the series exists from a schedule's first run that was not a dry run)
        assert (value(samples, "cleanups_bytes_freed_total", schedule=schedule.name) or 0) == freed


# 1. Who may read /metrics ----------------------------------------------------------------------


def test_metrics_is_for_staff_or_the_bearer_token_only(
    engine_port, client, admin_client, django_user_model, settings
):
    settings.METRICS_TOKEN = ""
    response = scrape(client)
    assert response.status_code == 403
    assert response["WWW-Authenticate"] == 'Bearer realm="cleanups metrics"'
    assert scrape(client, Authorization="Bearer ").status_code == 403  # no token: none matches

    response = scrape(admin_client)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert "no-store" in response["Cache-Control"]

    settings.METRICS_TOKEN = "s3cret-token-for-prometheus"
    assert scrape(client, Authorization="Bearer s3cret-token-for-prometheus").status_code == 200
    assert scrape(client, Authorization="bearer s3cret-token-for-prometheus").status_code == 200
    assert scrape(client, Authorization="Bearer s3cret-token-for-prometheus!").status_code == 403
    assert scrape(client, Authorization="Bearer wrong").status_code == 403
    assert scrape(client, Authorization="Basic s3cret-token-for-prometheus").status_code == 403
    assert scrape(client).status_code == 403

    staff = django_user_model.objects.create_user("plain-staff", password="pw", is_staff=True)
    someone = django_user_model.objects.create_user("someone", password="pw")
    someone.user_permissions.add(Permission.objects.get(codename="view_cleanupschedule"))
    for user in (staff, someone):  # staff without the permission; not staff
        logged_in = Client()
        logged_in.force_login(user)
        assert scrape(logged_in).status_code == 403


# 2. The web process's /metrics: the fleet, from the database and the engine -----------------


def test_web_metrics_report_the_fleet_and_the_engine_without_failing_when_it_is_down(
    engine, admin_client, make_schedule, settings
):
    settings.RECONCILE_INTERVAL = 5.0
    now = timezone.now()
    make_schedule(name="on", desired_state="running", next_run_at=now + timedelta(hours=1))
    make_schedule(name="held", desired_state="paused")
    make_schedule(name="off")
    streak = make_schedule(name="streak", consecutive_failures=3)
    CleanupRun.objects.create(
        schedule=streak, iteration=1, task="sample", status="failed", started_at=now
    )
    make_schedule(name="healing", desired_state="running", recovering_since=now)
    make_schedule(name="overdue", desired_state="running", next_run_at=now - timedelta(minutes=5))
    busy = make_schedule(name="busy", desired_state="running", next_run_at=now)
    CleanupRun.objects.create(schedule=busy, iteration=1, task="sample", started_at=now)

    samples = web_samples(admin_client)
    assert value(samples, "cleanups_engine_up") == 1
    assert value(samples, "cleanups_database_up") == 1
    states = {dict(k)["state"]: v for k, v in matching(samples, "cleanups_schedules").items()}
    assert states == {
        "running": 3,  # on, overdue, busy
        "paused": 1,
        "stopped": 2,  # off, streak
        "failing": 1,
        "late": 1,
        "recovering": 1,
    }
    assert value(samples, "cleanups_worker_heartbeat_age_seconds") == float("inf")
    assert value(samples, "cleanups_workers") == 0
    assert value(samples, "cleanups_runs_in_progress") == 1
    assert matching(samples, "cleanups_schedule_consecutive_failures") == {
        frozenset({("schedule", "streak")}): 3
    }
    # The web endpoint serves the fleet's figures only: no process's own counters.
    assert not matching(samples, "cleanups_runs_total")

    Reconciler(worker_id(), 5.0).beat()
    samples = web_samples(admin_client)
    assert 0 <= value(samples, "cleanups_worker_heartbeat_age_seconds") < 5
    assert value(samples, "cleanups_workers") == 1
    WorkerHeartbeat.objects.update(last_seen=timezone.now() - timedelta(seconds=30))
    samples = web_samples(admin_client)
    assert value(samples, "cleanups_worker_heartbeat_age_seconds") >= 30
    assert value(samples, "cleanups_workers") == 0

    engine.stop(grace=0)
    samples = web_samples(admin_client)  # 200, never a 500
    assert value(samples, "cleanups_engine_up") == 0
    assert value(samples, "cleanups_database_up") == 1


def test_a_scrape_costs_the_same_queries_at_any_size(engine, admin_client, make_schedule):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            web_samples(admin_client)
        return len(captured)

    make_schedule(name="first", desired_state="running", consecutive_failures=1)
    small = queries()
    now = timezone.now()
    for n in range(30):
        schedule = make_schedule(
            name=f"fleet-{n}", desired_state="running", consecutive_failures=n % 3
        )
        CleanupRun.objects.bulk_create(
            CleanupRun(
                schedule=schedule,
                iteration=i + 1,
                task="sample",
                status="running" if i == 19 else "succeeded",
                started_at=now - timedelta(minutes=20 - i),
            )
            for i in range(20)
        )
        Reconciler(f"host:{n}:x", 5.0).beat()
    assert queries() == small


# 3. A worker's counters, as its runs end -------------------------------------------------------


def test_the_run_hooks_count_what_the_run_records_say(worker, make_schedule, settings):
    """In this process: the real worker's activities, the default registry."""
    Event.objects.bulk_create(Event(created_at=timezone.now(), kind="old") for _ in range(7))
    Event.objects.bulk_create(Event(created_at=timezone.now(), kind="dry") for _ in range(4))
    deleter = make_schedule(
        name=unique("deleter"),
        task="testapp_events_of_kind",
        params={"kind": "old"},
        max_iterations=2,
    )
    counter = make_schedule(
        name=unique("counter"),
        task="testapp_events_of_kind",
        params={"kind": "dry"},
        dry_run=True,
        max_iterations=1,
    )
    failing = make_schedule(name=unique("failing"), task="testapp_always_fails", max_iterations=2)
    slow = make_schedule(
        name=unique("slow"),
        task="sample",
        params={"seconds": 3},
        max_run_seconds=1,
        max_iterations=1,
    )
    lateness_before = REGISTRY.get_sample_value(
        "cleanups_run_lateness_seconds_count", {"task": "testapp_events_of_kind"}
    )
    for schedule in (deleter, counter, failing, slow):
        control.start_schedule(schedule)
    # Each records its outcome (and counts it) before it plans the next run, or stops: the
    # last stop means every count is in.
    wait_until(
        lambda: done(deleter, 2) and done(counter, 1) and done(failing, 2) and done(slow, 1),
        timeout=30,
    )

    samples = parse(metrics.worker_exposition()[0].decode())
    schedules = [deleter, counter, failing, slow]
    assert_counters_match_the_records(samples, schedules)
    assert (
        value(
            samples, "cleanups_items_deleted_total", schedule=deleter.name, target="testapp.Event"
        )
        == 7
    )
    assert not matching(samples, "cleanups_items_deleted_total", schedule=counter.name)  # dry
    assert (
        value(
            samples,
            "cleanups_runs_total",
            schedule=failing.name,
            task="testapp_always_fails",
            status="failed",
            trigger="scheduled",
        )
        == 2
    )
    assert matching(samples, "cleanups_runs_total", schedule=slow.name, status="timed_out")
    # Each planned run's lateness was observed once.
    planned = CleanupRun.objects.filter(
        schedule__in=[deleter, counter], planned_at__isnull=False
    ).count()
    assert planned >= 1
    lateness_after = REGISTRY.get_sample_value(
        "cleanups_run_lateness_seconds_count", {"task": "testapp_events_of_kind"}
    )
    assert lateness_after - (lateness_before or 0) == planned


def test_run_ended_counts_once_and_never_raises():
    def run(**fields: Any) -> CleanupRun:
        now = timezone.now()
        defaults: dict[str, Any] = {
            "task": "sample",
            "status": "succeeded",
            "trigger": "scheduled",
            "started_at": now,
            "planned_at": now - timedelta(seconds=0.2),
            "duration": timedelta(seconds=1.5),
            "details": {"targets": {"files": {"items": 3, "bytes": 4096}}},
        }
        return CleanupRun(**{**defaults, **fields})

    name = unique("unit")
    metrics.run_ended(name, run())
    metrics.run_ended(name, run(), recorded=0)  # a redelivery's write that changed nothing
    metrics.run_ended(name, run(status="skipped", details={"slots": 4}))
    metrics.run_ended(name, run(dry_run=True))
    metrics.run_ended(name, run(details={"targets": "not a mapping"}))  # logged, not raised
    samples = parse(metrics.worker_exposition()[0].decode())
    counted = {
        dict(k)["status"]: v
        for k, v in matching(samples, "cleanups_runs_total", schedule=name).items()
    }
    assert counted == {"succeeded": 3, "skipped": 1}
    assert value(samples, "cleanups_items_deleted_total", schedule=name, target="files") == 3
    assert value(samples, "cleanups_bytes_freed_total", schedule=name) == 4096


def test_the_reconcilers_actions_are_counted_by_kind(engine, durable_client, make_schedule):
    def count(kind: str) -> float:
        return REGISTRY.get_sample_value("cleanups_reconciler_actions_total", {"kind": kind})

    before = {kind: count(kind) for kind in metrics.RECONCILER_KINDS}
    reconciler = Reconciler(worker_id(), 0.5)
    schedule = make_schedule(name=unique("reconciled"), desired_state=RUNNING)
    dead = make_schedule(name=unique("dead-worker"))
    CleanupRun.objects.create(
        schedule=dead, iteration=1, task="sample", started_at=timezone.now(), worker="gone:1:x"
    )

    reconciler.tick()  # no orchestration: started; a dead worker's run: interrupted
    wait_until(lambda: is_live(durable_client, schedule))
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="stopped")
    reconciler.tick()  # a live orchestration of a stopped schedule: terminated

    changed = {kind: count(kind) - before[kind] for kind in metrics.RECONCILER_KINDS}
    assert changed == {**dict.fromkeys(metrics.RECONCILER_KINDS, 0), "started": 1,
                       "interrupted": 1, "terminated": 1}  # fmt: skip


# 4. runworker --metrics-port: scraped after a few runs, against the records -----------------


@pytest.mark.subprocess
def test_a_scrape_after_a_few_runs_matches_the_run_records(
    start_worker_process, make_schedule, admin_client, settings
):
    settings.RECONCILE_INTERVAL = 5.0  # this process's view: a heartbeat is young within 10 s
    Event.objects.bulk_create(Event(created_at=timezone.now(), kind="old") for _ in range(5))
    Event.objects.bulk_create(Event(created_at=timezone.now(), kind="dry") for _ in range(2))
    made = [
        make_schedule(
            name="events",
            task="testapp_events_of_kind",
            params={"kind": "old"},
            max_iterations=3,
        ),
        make_schedule(
            name="events-dry-run",
            task="testapp_events_of_kind",
            params={"kind": "dry"},
            dry_run=True,
            max_iterations=2,
        ),
        make_schedule(name="always-fails", task="testapp_always_fails", max_iterations=2),
    ]
    # Marked running as an operator's start marks them: the worker's reconciler starts them.
    CleanupSchedule.objects.update(desired_state=RUNNING)
    health_port, metrics_port = free_port(), free_port()
    worker = start_worker_process(
        "--health-port", str(health_port), "--metrics-port", str(metrics_port)
    )
    worker.wait_for_output(READY)
    wait_until(lambda: all(done(s, s.max_iterations) for s in made), timeout=45)

    status, text = get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert status == 200
    samples = parse(text)
    assert_counters_match_the_records(samples, made)
    runs = [run for schedule in made for run in finished_runs(schedule)]
    assert Counter(run.status for run in runs) == {"succeeded": 5, "failed": 2}
    assert sum(matching(samples, "cleanups_runs_total").values()) == len(runs)
    assert (
        value(samples, "cleanups_items_deleted_total", schedule="events", target="testapp.Event")
        == 5
    )

    # The histograms: one observation per finished run, durations summing as the records do.
    by_task = Counter(run.task for run in runs)
    for task, n in by_task.items():
        assert value(samples, "cleanups_run_duration_seconds_count", task=task) == n
        assert value(samples, "cleanups_run_duration_seconds_bucket", task=task, le="+Inf") == n
        total = sum(r.duration.total_seconds() for r in runs if r.task == task)
        assert value(samples, "cleanups_run_duration_seconds_sum", task=task) == pytest.approx(
            total, abs=1e-3
        )
        planned = [r for r in runs if r.task == task and r.planned_at is not None]
        assert value(samples, "cleanups_run_lateness_seconds_count", task=task) == len(planned)
        lateness = sum((r.started_at - r.planned_at).total_seconds() for r in planned)
        assert value(samples, "cleanups_run_lateness_seconds_sum", task=task) == pytest.approx(
            lateness, abs=1e-3
        )
    assert value(samples, "cleanups_reconciler_actions_total", kind="started") == 3
    assert value(samples, "cleanups_worker_stream_connected") == 1
    assert value(samples, "cleanups_reconciler_passes_total") >= 1
    assert value(samples, "process_cpu_seconds_total") is not None  # the library's own

    # Each port serves what it was given.
    assert get(f"http://127.0.0.1:{metrics_port}/healthz")[0] == 404
    assert get(f"http://127.0.0.1:{health_port}/metrics")[0] == 404
    assert get(f"http://127.0.0.1:{health_port}/healthz")[0] == 200

    # Meanwhile the web process reports the fleet from the database and the worker's engine.
    fleet = web_samples(admin_client)
    assert value(fleet, "cleanups_engine_up") == 1
    assert value(fleet, "cleanups_workers") == 1
    assert value(fleet, "cleanups_worker_heartbeat_age_seconds") < 10
    assert value(fleet, "cleanups_schedules", state="stopped") == 3
    assert value(fleet, "cleanups_schedule_consecutive_failures", schedule="always-fails") == 2
    assert worker.stop() == 0, worker.output


@pytest.mark.subprocess
def test_a_busy_metrics_port_is_one_line(start_worker_process):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = start_worker_process("--metrics-port", str(port))
        assert worker.process.wait(timeout=30) != 0
    worker._reader.join(timeout=5)
    assert "Traceback" not in worker.output, worker.output
    assert READY not in worker.output
    about_the_port = [line for line in worker.lines if "in use" in line]
    assert about_the_port == [
        f"CommandError: cannot listen on 127.0.0.1:{port} for --metrics-port: the port is in "
        "use (is another runworker running?). Pass another port."
    ], worker.output


def test_metrics_speak_openmetrics_to_a_scraper_that_asks(engine_port, admin_client):
    accept = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    response = scrape(admin_client, Accept=accept)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().endswith("# EOF\n")
    assert "cleanups_engine_up 0" in response.content.decode()  # nothing on the engine's port
