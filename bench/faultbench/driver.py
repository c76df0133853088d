"""The bench's run: its database, superuser and schedules, the processes, the threads and the
faults for ``--seconds``, settling, and what the checks read."""

from __future__ import annotations

import pickle
import random
import signal
import threading
import time
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import DatabaseError, connection, connections
from django.db.models import Count
from django.utils import timezone
from durabletask.client import OrchestrationStatus

from bench.faultbench import dbfaults
from bench.faultbench.actors import (
    act,
    browse,
    inject_faults,
    operate,
    report_progress,
    sample_states,
)
from bench.faultbench.environment import (
    ENGINE_PORT,
    INTERVALS,
    MIN_SETTLE,
    PASSWORD,
    TOLERANCE,
    USERNAME,
    WORKDIR,
)
from bench.faultbench.processes import BenchError, say
from bench.faultbench.record import STOPPED, Bench, Config, Observed, Run, ScheduleInfo
from bench.faultbench.report import check_and_report, write_actions
from cleanups import control, instances
from cleanups.cadence import CRON, FIXED_DELAY, FIXED_RATE
from cleanups.models import CleanupRun, CleanupSchedule

# Set-up ---------------------------------------------------------------------------------------


def create_schedules(bench: Bench, user: Any) -> None:
    rng = random.Random(f"{bench.seed}:schedules")
    for number in range(1, bench.args.schedules + 1):
        kind = rng.choices(["fast", "slow", "failing"], weights=[5, 3, 2])[0]
        params: dict[str, Any] = {
            "fast": {"seconds": 0},
            "slow": {"seconds": round(rng.uniform(0.2, 1.5), 1)},
            "failing": {"seconds": "x"},  # a failed run, every time
        }[kind]
        cadence = rng.choices([FIXED_DELAY, FIXED_RATE, CRON], weights=[5, 4, 1])[0]
        config = Config(
            timedelta(seconds=rng.choice(INTERVALS)),
            cadence,
            "* * * * *" if cadence == CRON else "",
        )
        missed_runs = rng.choices(list(CleanupSchedule.MissedRuns.values), weights=[3, 1])[0]
        max_retries = rng.choice([0, 0, 1]) if kind == "failing" else 0
        # Created as a migration or a script would: a failing one would not pass the form.
        schedule = CleanupSchedule.objects.create(
            name=f"fault-{number:03}",
            task="sample",
            params=params,
            cadence=cadence,
            interval=config.interval,
            cron=config.cron,
            timezone="UTC",
            missed_runs=missed_runs,
            max_retries=max_retries,
            changed_by=user,
        )
        bench.schedules[schedule.pk] = ScheduleInfo(
            schedule.pk, schedule.name, kind, config, missed_runs, max_retries
        )
        bench.desired[schedule.pk] = STOPPED
    if bench.args.database_faults:
        # Row-deleting schedules: the expired sessions the bench makes all the time, in small
        # batches (a fault lands inside a run), every 1 to 2 s.
        for number in (1, 2):
            config = Config(timedelta(seconds=number), FIXED_DELAY, "")
            schedule = CleanupSchedule.objects.create(
                name=f"rows-{number}",
                task="expired_sessions",
                params={"batch_size": 5},
                cadence=FIXED_DELAY,
                interval=config.interval,
                timezone="UTC",
                max_table_fraction=0,
                changed_by=user,
            )
            bench.schedules[schedule.pk] = ScheduleInfo(
                schedule.pk, schedule.name, "rows", config, schedule.missed_runs, 0
            )
            bench.desired[schedule.pk] = STOPPED


def planned_at_measurable() -> bool:
    """Whether CleanupRun has a planned_at field, and its table the column."""
    if not any(f.name == "planned_at" for f in CleanupRun._meta.get_fields()):
        return False
    with connection.cursor() as cursor:
        columns = connection.introspection.get_table_description(cursor, CleanupRun._meta.db_table)
    return any(column.name == "planned_at" for column in columns)


# The run --------------------------------------------------------------------------------------


def settle(bench: Bench, operator: threading.Thread) -> None:
    bench.stop_operating.set()
    operator.join()
    for child in bench.workers:
        if child.running:
            child.signal(signal.SIGCONT)
        else:
            child.start_ready()
    bench.settle_started = timezone.now()
    say(f"settling: at least {MIN_SETTLE:.0f} s, at most {MIN_SETTLE + bench.args.settle:.0f} s")
    time.sleep(MIN_SETTLE)
    deadline = time.monotonic() + bench.args.settle
    while time.monotonic() < deadline:
        # Settled: no run begun before settling still running, and no running schedule overdue
        # (an engine restart just before the end leaves a recovery to finish).
        overdue = CleanupSchedule.objects.should_run().filter(
            next_run_at__lt=timezone.now() - TOLERANCE
        )
        begun = CleanupRun.objects.running().filter(started_at__lt=bench.settle_started)
        try:
            if not begun.exists() and not overdue.exists():
                break
        except DatabaseError:
            pass
        # A fresh connection each time: one a database fault dropped is not used again.
        connections.close_all()
        time.sleep(0.5)


def final_states() -> dict[str, OrchestrationStatus]:
    for attempt in range(5):
        try:
            return {
                instance: state.runtime_status
                for instance, state in instances.fetch_runtime_states().items()
            }
        except instances.EngineUnavailable:
            if attempt == 4:
                raise BenchError("the engine is unreachable after settling") from None
            time.sleep(2.0)
    raise AssertionError("unreachable")


def load_runs(measurable: bool) -> list[Run]:
    fields = [
        "schedule_id",
        "iteration",
        "status",
        "trigger",
        "started_at",
        "finished_at",
        "worker",
        "attempts",
        "reason",
        "details",
    ]
    rows = CleanupRun.objects.order_by("schedule_id", "iteration").values(
        *fields, *(["planned_at"] if measurable else [])
    )
    return [
        Run(
            row["schedule_id"],
            row["iteration"],
            row["status"],
            row["trigger"],
            row["started_at"],
            row["finished_at"],
            row["worker"],
            row["attempts"],
            row["reason"],
            row["details"] or {},
            row.get("planned_at"),
        )
        for row in rows
    ]


def run(bench: Bench) -> int:
    args = bench.args
    say(f"database, logs in {WORKDIR}; migrating")
    call_command("migrate", verbosity=0)
    measurable = planned_at_measurable()
    user = get_user_model().objects.create_superuser(USERNAME, "bench@example.com", PASSWORD)
    create_schedules(bench, user)
    connections.close_all()

    say(f"starting 3 workers (engine on 127.0.0.1:{ENGINE_PORT}) and the web server")
    for child in [*bench.workers, bench.web]:
        child.start()
    for child in [*bench.workers, bench.web]:
        child.wait_ready()

    bench.began = timezone.now()
    for pk in sorted(bench.schedules):
        act(bench, "start", pk, control.start_schedule)
    threads = [
        threading.Thread(target=target, args=(bench,), name=target.__name__, daemon=True)
        for target in (sample_states, browse, report_progress)
    ]
    if args.database_faults:
        threads.append(threading.Thread(target=dbfaults.feed, args=(bench,), daemon=True))
    operator = threading.Thread(target=operate, args=(bench,), name="operate", daemon=True)
    for thread in [*threads, operator]:
        thread.start()
    say(f"{len(bench.schedules)} schedules started; faults and actions for {args.seconds:g} s")
    inject_faults(bench, time.monotonic() + args.seconds)

    settle(bench, operator)
    bench.stop_watching.set()
    for thread in threads:
        thread.join()
    bench.checked_at = timezone.now()
    connections.close_all()
    states = final_states()
    schedules = {
        row["pk"]: row
        for row in CleanupSchedule.objects.values("pk", "name", "desired_state", "instance_id")
    }
    runs = load_runs(measurable)
    duplicates = list(
        CleanupRun.objects.values("schedule_id", "iteration")
        .annotate(rows=Count("pk"))
        .filter(rows__gt=1)
    )
    bench.rows.found = dbfaults.check_counts(bench)
    connections.close_all()
    for child in [bench.web, *bench.workers]:
        child.stop()
    say("checking")
    write_actions(bench)
    observed = Observed(measurable, runs, duplicates, schedules, states)
    if bench.args.keep:
        with (WORKDIR / "observed.pickle").open("wb") as out:
            pickle.dump((bench, observed), out)
    return check_and_report(bench, observed)
