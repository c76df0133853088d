"""One reconciler at a time, and passes that read only what changed."""

from __future__ import annotations

import logging
import signal
import time
from datetime import timedelta

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from cleanups import control
from cleanups.durable import election
from cleanups.durable.election import Election
from cleanups.durable.reconciler import Reconciler
from cleanups.models import CleanupRun, CleanupSchedule, ReconcilerLease, WorkerHeartbeat
from tests.conftest import is_live, wait_for_clock, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
READY = "Press Ctrl+C to stop."
HOUR = timedelta(hours=1)


def test_one_worker_holds_the_lease_until_it_releases_or_lets_it_expire():
    first, second = Election("host:1:a", 0.2), Election("host:2:b", 0.2)
    assert first.try_lead() and not second.try_lead()
    assert first.try_lead() and not second.try_lead()  # renewed, still the first's
    assert election.holder() == "host:1:a"

    first.resign()  # a worker stopping hands over at once
    assert second.try_lead() and not first.try_lead()
    assert not first.leading.is_set() and not first.deposed.is_set()  # it resigned

    # A holder that stops renewing (killed) loses it once it has expired, in database time.
    expires = ReconcilerLease.objects.get().expires_at
    wait_for_clock(expires)
    assert first.try_lead() and not first.deposed.is_set()
    assert not second.try_lead() and second.deposed.is_set()


def test_a_lease_the_database_refuses_is_lost_and_said_once_per_outage(caplog):
    # The lease thread tries three times an interval; an outage is one warning, not a stream.
    def refuse(execute, sql, params, many, context):
        if "cleanups_reconcilerlease" in sql:
            raise OperationalError("disk I/O error")
        return execute(sql, params, many, context)

    lead = Election("host:1:a", 0.2)
    assert lead.try_lead()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cleanups.reconciler"):
        with connection.execute_wrapper(refuse):
            assert not any(lead.try_lead() for _ in range(5))
            assert lead.deposed.is_set() and not lead.leading.is_set()
        assert lead.try_lead()
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "reconciler: could not renew the lease: disk I/O error",
        "reconciler: host:1:a no longer reconciles (another worker does)",
        "reconciler: the lease can be renewed again",
        "reconciler: host:1:a reconciles now",
    ]


def _running(make_schedule, name):
    return make_schedule(
        name=name,
        interval=HOUR,
        desired_state=CleanupSchedule.DesiredState.RUNNING,
        next_run_at=timezone.now() + HOUR,
    )


def passes(engine, reconciler):
    """One pass after another: (fleet-wide queries, reads by id, the ids read) of each."""

    def one_pass() -> tuple[int, int, set[str]]:
        engine.calls.clear()
        engine.asked_for.clear()
        reconciler.tick()
        return engine.calls["QueryInstances"], engine.calls["GetInstance"], set(engine.asked_for)

    return one_pass


def test_between_sweeps_a_pass_reads_only_what_changed(
    engine, worker, durable_client, make_schedule
):
    fleet = [_running(make_schedule, f"tenant-{n:02d}") for n in range(30)]
    # A short interval: a change is read back to an interval before the pass before.
    reconciler = Reconciler(worker="test-host:1:me", interval=0.01)
    one_pass = passes(engine, reconciler)
    queries, _, _ = one_pass()  # its first pass sweeps, and starts the whole fleet
    assert queries == 1
    assert all(is_live(durable_client, schedule) for schedule in fleet)
    wait_until(lambda: one_pass() == (0, 0, set()))  # the fleet waits: nothing is read

    paused = fleet[3]
    control.pause_schedule(paused)
    queries, _, asked = one_pass()
    assert queries == 0 and asked == {paused.instance_id}
    wait_until(lambda: one_pass() == (0, 0, set()))

    # An instance lost behind the database's back, once overdue, is read and started again.
    lost = fleet[7]
    durable_client.terminate_orchestration(lost.instance_id)
    wait_until(lambda: not is_live(durable_client, lost))
    CleanupSchedule.objects.filter(pk=lost.pk).update(next_run_at=timezone.now() - HOUR)
    queries, _, asked = one_pass()
    assert queries == 0 and lost.instance_id in asked and paused.instance_id not in asked
    assert is_live(durable_client, lost)

    # Lost and not due for an hour: nothing in the database says so; the sweep finds it.
    unnoticed = fleet[11]
    durable_client.terminate_orchestration(unnoticed.instance_id)
    wait_until(lambda: not is_live(durable_client, unnoticed))
    CleanupSchedule.objects.filter(pk=lost.pk).update(next_run_at=timezone.now() + HOUR)
    assert one_pass()[0] == 0 and not is_live(durable_client, unnoticed)
    # A worker that starts an embedded engine (new, empty) asks for a sweep: the next pass.
    election.ask_for_sweep()
    assert one_pass()[0] == 1 and is_live(durable_client, unnoticed)
    assert one_pass()[0] == 0  # asked once, swept once
    durable_client.terminate_orchestration(unnoticed.instance_id)
    wait_until(lambda: not is_live(durable_client, unnoticed))
    reconciler.sweep_seconds = 0  # RECONCILE_SWEEP_SECONDS come round
    assert one_pass()[0] == 1 and is_live(durable_client, unnoticed)


def test_a_pass_reads_the_schedules_of_runs_a_dead_worker_left(engine, make_schedule):
    schedule = _running(make_schedule, "tenant")
    reconciler = Reconciler(worker="test-host:1:me", interval=0.01)
    one_pass = passes(engine, reconciler)
    wait_until(lambda: one_pass() == (0, 0, set()))
    now = timezone.now()
    WorkerHeartbeat.objects.create(
        worker="elsewhere:9:gone", hostname="elsewhere", pid=9, started_at=now, last_seen=now - HOUR
    )
    CleanupRun.objects.create(
        schedule=schedule, iteration=1, task="sample", started_at=now, worker="elsewhere:9:gone"
    )
    assert one_pass() == (0, 1, {schedule.instance_id})
    assert CleanupRun.objects.get(schedule=schedule).status == CleanupRun.Status.INTERRUPTED


def test_three_workers_one_reconciler_and_another_takes_over_after_a_kill(
    engine, engine_port, start_worker_process, make_schedule
):
    interval = 1.0
    env = {
        "ENDPOINT": f"http://127.0.0.1:{engine_port}",
        "RECONCILE_INTERVAL": str(interval),
    }
    workers = [start_worker_process(env=env) for _ in range(3)]
    for process in workers:
        process.wait_for_output(READY)
    schedules = [
        make_schedule(name=f"s{n}", desired_state="running", interval=timedelta(seconds=1))
        for n in range(6)
    ]

    # Every worker beats and takes work; one of them reconciles (and so starts the fleet).
    wait_until(lambda: WorkerHeartbeat.objects.count() == 3)
    wait_until(lambda: CleanupRun.objects.filter(status="succeeded").count() >= 18, timeout=40)
    leader = election.holder()
    assert leader in {beat.worker for beat in WorkerHeartbeat.objects.all()}
    # The others run work too.
    wait_until(lambda: set(CleanupRun.objects.values_list("worker", flat=True)) - {leader})
    leading = [p for p in workers if "reconciles now" in p.output]
    assert len(leading) == 1
    # One sweep (the leader's first pass) in all: no worker reads the fleet between sweeps.
    assert engine.calls["QueryInstances"] == 1

    doomed = leading[0]
    killed_at = time.monotonic()
    doomed.stop(signal.SIGKILL)
    wait_until(lambda: election.holder() != leader, timeout=10, interval=0.02)
    took_over = time.monotonic() - killed_at
    assert took_over < 2 * interval, f"took {took_over:.2f} s"
    # The new reconciler acts: a schedule started in the database only is started by it.
    late = make_schedule(name="late", desired_state="running", interval=timedelta(seconds=1))
    wait_until(lambda: CleanupRun.objects.filter(schedule=late, status="succeeded").exists())
    assert len([p for p in workers if "reconciles now" in p.output]) == 2
    assert all(s.runs.exists() for s in schedules)


def test_a_schedule_a_sweep_left_for_its_running_run_is_looked_at_again(
    engine, durable_client, make_schedule
):
    """An engine lost every instance while a run executes on a live worker: the sweep leaves
    that schedule for its run to finish, and a pass between sweeps comes back to it (its
    next slot is an hour away: only the pass's memory brings it back)."""
    schedule = _running(make_schedule, "tenant")
    reconciler = Reconciler(worker="test-host:1:me", interval=0.01)
    one_pass = passes(engine, reconciler)
    now = timezone.now()
    WorkerHeartbeat.objects.create(
        worker="other:2:alive", hostname="other", pid=2, started_at=now, last_seen=now
    )
    run = CleanupRun.objects.create(
        schedule=schedule, iteration=1, task="sample", started_at=now, worker="other:2:alive"
    )
    assert one_pass()[0] == 1  # the sweep: missing, but its run is still executing
    assert not is_live(durable_client, schedule)
    assert one_pass() == (0, 1, {schedule.instance_id})  # looked at again, still executing

    CleanupRun.objects.filter(pk=run.pk).update(
        status=CleanupRun.Status.SUCCEEDED, finished_at=timezone.now() - HOUR
    )
    queries, _, asked = one_pass()
    assert queries == 0 and asked == {schedule.instance_id}
    assert is_live(durable_client, schedule)
    wait_until(lambda: one_pass() == (0, 0, set()))  # then left alone


def test_an_overdue_schedule_seen_live_is_read_again_only_after_a_while(
    engine, worker, durable_client, make_schedule
):
    """A saturated fleet is overdue all over: a late schedule whose instance a pass saw live
    lately is left alone until ``recheck_seconds`` went by; then it is read again, and one
    lost meanwhile is started again. (One never seen live is read at once: the test above.)
    The passes are the reconciler's own, without the election: what another process of the
    suite may hold meanwhile does not matter here."""
    schedule = _running(make_schedule, "tenant")
    reconciler = Reconciler(worker="test-host:1:me", interval=0.01)

    def one_pass() -> tuple[int, int, set[str]]:
        engine.calls.clear()
        engine.asked_for.clear()
        reconciler.reconcile()
        return engine.calls["QueryInstances"], engine.calls["GetInstance"], set(engine.asked_for)

    assert one_pass()[0] == 1  # the first pass sweeps, and starts it
    wait_until(lambda: is_live(durable_client, schedule))
    CleanupSchedule.objects.filter(pk=schedule.pk).update(next_run_at=timezone.now() - HOUR)
    reconciler.recheck_seconds = 0  # overdue, and not seen lately: read, and seen live
    wait_until(lambda: one_pass() == (0, 1, {schedule.instance_id}))
    assert schedule.pk in reconciler._seen_live
    reconciler.recheck_seconds = 3600  # seen a moment ago: left alone, however late
    assert one_pass() == (0, 0, set())

    durable_client.terminate_orchestration(schedule.instance_id)
    wait_until(lambda: not is_live(durable_client, schedule))
    assert one_pass() == (0, 0, set())  # not read: nothing says it is gone
    reconciler.recheck_seconds = 0  # the while goes by
    queries, _, asked = one_pass()
    assert queries == 0 and asked == {schedule.instance_id}
    assert is_live(durable_client, schedule)  # lost meanwhile: started again
