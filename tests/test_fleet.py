"""Fleets: actions on thousands of schedules answer at once, and the engine brings every one up;
thousands of waiting schedules cost no thread each. Real engine, worker, admin and runworker."""

from __future__ import annotations

import re
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from django.contrib.messages import get_messages
from django.db.models import CharField, Value
from django.db.models.functions import Cast, Concat
from django.urls import reverse
from django.utils import timezone
from durabletask import client as dt_client

from cleanups import control, instances
from cleanups.models import INSTANCE_ID_PREFIX, CleanupSchedule
from tests.conftest import is_live, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
Status = dt_client.OrchestrationStatus
CHANGELIST = "admin:cleanups_cleanupschedule_changelist"
READY = "Press Ctrl+C to stop"


def many_schedules(count: int, **fields) -> None:
    """``count`` stopped schedules in one INSERT, each with its instance id, as saves give them."""
    fields.setdefault("interval", timedelta(hours=1))
    CleanupSchedule.objects.bulk_create(
        CleanupSchedule(name=f"fleet-{n}", task="sample", params={"seconds": 0}, **fields)
        for n in range(count)
    )
    CleanupSchedule.objects.update(
        instance_id=Concat(Value(INSTANCE_ID_PREFIX), Cast("pk", CharField()))
    )


def live_count(client=None) -> int:
    states = instances.fetch_runtime_states()
    return sum(state.runtime_status in instances.LIVE_STATUSES for state in states.values())


def status_count(client, status) -> int:
    return sum(s.runtime_status == status for s in instances.fetch_runtime_states().values())


def test_bulk_actions_take_a_fleet_through_its_states(worker, durable_client):
    many_schedules(30, start_at=timezone.now() + timedelta(hours=1))  # all wait on their timer
    fleet = CleanupSchedule.objects.all()

    started = control.start_schedules(fleet)
    assert (started.changed, started.message) == (30, "30 schedules starting.")
    wait_until(lambda: live_count(durable_client) == 30)
    assert set(fleet.values_list("desired_state", flat=True)) == {"running"}

    paused = control.pause_schedules(fleet)
    assert paused.message == "30 schedules pausing."
    wait_until(lambda: status_count(durable_client, Status.SUSPENDED) == 30)

    resumed = control.resume_schedules(fleet)
    assert resumed.message == "30 schedules resuming."
    wait_until(lambda: status_count(durable_client, Status.RUNNING) == 30)

    generations = dict(fleet.values_list("pk", "generation"))
    restarted = control.restart_schedules(fleet)
    assert restarted.message == "30 schedules restarting."
    now = dict(fleet.values_list("pk", "generation"))
    assert {pk: now[pk] - generations[pk] for pk in now} == dict.fromkeys(generations, 1)
    assert control.wait_for_bulk_engine_calls(timeout=60)
    assert live_count(durable_client) == 30

    again = control.start_schedules(fleet)
    assert again.message == "30 schedules already running."

    ended = control.terminate_schedules(fleet)
    assert ended.message == "30 schedules terminating."
    wait_until(lambda: live_count(durable_client) == 0)
    assert set(fleet.values_list("desired_state", flat=True)) == {"stopped"}


def test_a_bulk_start_applies_a_fresh_start_to_each(
    worker, durable_client, make_schedule, settings
):
    """As start_schedule does one by one: anchor, start_iteration and first run, the count going
    on from each schedule's own runs; a cron schedule's first run is its first time."""
    many_schedules(25)
    CleanupSchedule.objects.filter(name="fleet-0").update(current_iteration=7)
    cron = make_schedule(cadence="cron", cron="0 3 * * *", timezone="UTC")
    before = timezone.now()

    control.start_schedules(CleanupSchedule.objects.all())

    first = CleanupSchedule.objects.get(name="fleet-0")
    lead = timedelta(seconds=settings.CLEANUP_DISPATCH_LEAD_SECONDS)  # spread from then
    assert first.start_iteration == 8
    assert before + lead <= first.next_run_at <= timezone.now() + lead
    assert first.anchor_at == first.next_run_at
    cron.refresh_from_db()
    assert (cron.next_run_at.hour, cron.next_run_at.minute) == (3, 0)
    wait_until(lambda: is_live(durable_client, cron))


def test_a_bulk_start_refuses_a_schedule_that_cannot_compute_its_next_run(engine):
    many_schedules(24)
    CleanupSchedule.objects.filter(name="fleet-3").update(cadence="cron", cron="0 0 30 2 *")

    outcome = control.start_schedules(CleanupSchedule.objects.all())

    assert outcome.refused == 1 and outcome.changed == 23
    assert "1 schedule cannot run" in outcome.message
    broken = CleanupSchedule.objects.get(name="fleet-3")
    assert broken.desired_state == "stopped" and "never fires" in broken.status_reason


def test_a_bulk_start_counts_a_paused_schedule_that_cannot_run_as_refused(engine):
    many_schedules(24)
    CleanupSchedule.objects.filter(name__in=["fleet-3", "fleet-4"]).update(desired_state="paused")
    CleanupSchedule.objects.filter(name="fleet-3").update(cadence="cron", cron="0 0 30 2 *")

    outcome = control.start_schedules(CleanupSchedule.objects.all())

    assert (outcome.changed, outcome.unchanged, outcome.refused) == (23, 0, 1)
    assert "1 schedule cannot run" in outcome.message
    assert "already running" not in outcome.message


def test_select_all_start_of_2000_schedules_is_one_short_request(
    admin_client, worker, durable_client, django_assert_max_num_queries
):
    """Django admin's "select all" (select_across) on 2,000 schedules: a fixed number of
    queries, whatever the count, no engine call in the request, then every one comes up."""
    many_schedules(2000, start_at=timezone.now() + timedelta(hours=1))

    with django_assert_max_num_queries(40):
        response = admin_client.post(
            reverse(CHANGELIST),
            {
                "action": "start_schedules",
                "select_across": "1",
                "index": "0",
                "_selected_action": list(
                    CleanupSchedule.objects.values_list("pk", flat=True)[:100]
                ),
            },
        )

    assert response.status_code == 302
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["2,000 schedules starting."]
    assert CleanupSchedule.objects.filter(desired_state="running").count() == 2000
    wait_until(lambda: live_count(durable_client) == 2000, timeout=120)


def test_a_small_selection_still_reports_each_schedule(admin_client, engine, make_schedule):
    schedules = [make_schedule() for _ in range(3)]

    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "start_schedules", "_selected_action": [s.pk for s in schedules]},
    )

    shown = [str(m) for m in get_messages(response.wsgi_request)]
    assert len(shown) == 3 and all("started at iteration 1" in m for m in shown)


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))


@pytest.mark.subprocess
def test_2000_waiting_schedules_need_fewer_than_100_threads(start_worker_process):
    worker = start_worker_process()
    worker.wait_for_output(READY)
    many_schedules(2000, start_at=timezone.now() + timedelta(hours=1))

    control.start_schedules(CleanupSchedule.objects.all())
    wait_until(lambda: live_count() == 2000, timeout=120)

    threads = threads_of(worker.process.pid)
    assert threads < 100, f"runworker has {threads} threads for 2,000 waiting timers"


def test_a_bulk_start_spreads_a_fleets_first_runs(worker, durable_client, make_schedule, settings):
    """A fleet started in one click does not fall due at one instant at every interval: the
    interval schedules' first runs (and fixed-rate grids) are at most CLEANUP_BULK_START_RATE
    a second apart, evenly within one interval, from one dispatch lead on; one with a start_at
    of its own keeps it."""
    settings.CLEANUP_BULK_START_RATE = 10  # 100 ms apart at most
    lead = timedelta(seconds=settings.CLEANUP_DISPATCH_LEAD_SECONDS)
    many_schedules(30, interval=timedelta(seconds=2), cadence="fixed_rate")  # 2 s / 30 apart
    hourly = [
        make_schedule(name=f"hourly-{n}", interval=timedelta(hours=1), cadence="fixed_delay")
        for n in range(25)
    ]
    later = timezone.now() + timedelta(hours=2)
    own = make_schedule(name="own-start", interval=timedelta(hours=1), start_at=later)
    before = timezone.now()

    outcome = control.start_schedules(CleanupSchedule.objects.all())

    assert outcome.message == (
        "56 schedules starting. Their first runs are spread over 2 seconds, so that they do not"
        " all fall due at once."
    )
    fleet = CleanupSchedule.objects.filter(name__startswith="fleet-").order_by("pk")
    firsts = [s.next_run_at for s in fleet]
    assert before + lead <= firsts[0] <= timezone.now() + lead
    gaps = {round((b - a).total_seconds(), 6) for a, b in pairwise(firsts)}
    assert gaps == {round(2 / 30, 6)}
    assert all(s.anchor_at == s.next_run_at for s in fleet)
    hourly_firsts = sorted(
        CleanupSchedule.objects.filter(pk__in=[s.pk for s in hourly]).values_list(
            "next_run_at", flat=True
        )
    )
    assert (hourly_firsts[-1] - hourly_firsts[0]) == 24 * timedelta(seconds=0.1)
    own.refresh_from_db()
    assert own.next_run_at == later

    # The engine runs each at its own first time, not before.
    control.wait_for_bulk_engine_calls(timeout=60)
    last = fleet.last()
    wait_until(lambda: last.runs.filter(status="succeeded").exists(), timeout=30)
    run = last.runs.get(iteration=1)
    assert run.planned_at == firsts[-1] <= run.started_at


def test_a_bulk_start_rate_of_0_starts_every_first_run_at_once(engine, settings):
    settings.CLEANUP_BULK_START_RATE = 0
    many_schedules(25)

    outcome = control.start_schedules(CleanupSchedule.objects.all())

    assert outcome.message == "25 schedules starting."
    assert CleanupSchedule.objects.values("next_run_at").distinct().count() == 1
