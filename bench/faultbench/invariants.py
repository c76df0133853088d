"""The invariant checker: every guarantee's violations, counted after the run (0 is the only
pass). The invariants are defined in bench/faults.py's docstring; the timing ones are in slots.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from durabletask.client import OrchestrationStatus

from bench.faultbench.dbfaults import DATABASE_FAULT_KINDS
from bench.faultbench.environment import LIVENESS_LIMIT
from bench.faultbench.record import (
    DATABASE_WAIT_LINE,
    PAUSED,
    RETRY_LINE,
    RUN_LINE,
    RUNNING,
    STOPPED,
    Bench,
    Observed,
    Run,
    Sample,
    Status,
    actions_of,
    describe,
    nearby,
)
from bench.faultbench.slots import (
    check_missed_slots,
    check_never_early_derived,
    check_never_early_planned,
)
from cleanups import instances


@dataclass
class Logs:
    """What the workers' logs say about runs: who finished which iteration, when attempts ended."""

    finished: dict[tuple[str, int], list[str]] = field(default_factory=lambda: defaultdict(list))
    attempt_ended: dict[tuple[str, int, int], datetime] = field(default_factory=dict)
    # schedule pk -> (when its activity stopped to wait for the database, which iteration;
    # None: not said).
    database_waits: dict[int, list[tuple[datetime, int | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )


def read_logs(bench: Bench) -> Logs:
    logs = Logs()
    zone = ZoneInfo(settings.TIME_ZONE)  # Django sets every process's TZ to it
    for child in bench.workers:
        for number, path in enumerate(child.logs, start=1):
            for line in path.read_text(errors="replace").splitlines():
                if match := RUN_LINE.search(line):
                    key = (match["name"], int(match["iteration"]))
                    logs.finished[key].append(f"{child.name}#{number} {match['status']}")
                elif match := RETRY_LINE.search(line):
                    at = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f")
                    attempt = (match["name"], int(match["iteration"]), int(match["attempt"]))
                    logs.attempt_ended[attempt] = at.replace(tzinfo=zone)
                elif match := DATABASE_WAIT_LINE.search(line):
                    at = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f")
                    iteration = int(match["iteration"]) if match["iteration"] else None
                    pk = int(match["pk"] or match["old"])
                    logs.database_waits[pk].append((at.replace(tzinfo=zone), iteration))
    return logs


def check_iterations(bench: Bench, duplicates: list[dict[str, Any]], logs: Logs) -> list[str]:
    found = [
        f"{bench.schedules[row['schedule_id']].name} #{row['iteration']}: {row['rows']} rows"
        for row in duplicates
    ]
    for (name, iteration), where in sorted(logs.finished.items()):
        if len(where) > 1:
            found.append(f"{name} #{iteration} finished {len(where)} times: {', '.join(where)}")
    return found


def death_of(bench: Bench, worker: str, started: datetime) -> datetime | None:
    """When the worker process that ran a run died, if it did (worker ids hold the pid)."""
    try:
        pid = int(worker.split(":")[1])
    except (IndexError, ValueError):
        return None
    for child in bench.workers:
        for life in child.lives:
            if life.pid == pid and life.started <= started and life.died:
                return life.died
    return None


def execution_end(bench: Bench, record: Run, logs: Logs) -> datetime:
    """When the run's execution ended. An interrupted run's finished_at is when a reconciler
    marked it: it ended when its worker died, when its last attempt failed and waited for a
    retry that never came, or when its activity stopped to wait for the database (it claims
    the run again once the database is back, and its record then says so), whichever is known
    and first. A running run with finished_at set waits for a retry (activities.py): nobody
    executes it."""
    assert bench.checked_at is not None
    if record.status == Status.INTERRUPTED:
        name = bench.schedules[record.schedule].name
        waits = [
            at
            for at, iteration in logs.database_waits.get(record.schedule, [])
            if at >= record.started_at and iteration in (None, record.iteration)
        ]
        known = [
            moment
            for moment in (
                death_of(bench, record.worker, record.started_at),
                logs.attempt_ended.get((name, record.iteration, record.attempts)),
                min(waits, default=None),
            )
            if moment is not None
        ]
        if known:
            return min(known)
    return record.finished_at or bench.checked_at


def check_concurrent(bench: Bench, runs: list[Run], logs: Logs) -> list[str]:
    found = []
    by_schedule: dict[int, list[Run]] = defaultdict(list)
    for record in runs:
        if record.status != Status.SKIPPED:
            by_schedule[record.schedule].append(record)
    for pk, records in by_schedule.items():
        records.sort(key=lambda r: r.started_at)
        latest: Run | None = None
        latest_end = bench.began
        for record in records:
            if latest is not None and record.started_at < latest_end:
                found.append(
                    f"{bench.schedules[pk].name}: {describe(bench, record)} began "
                    f"{(latest_end - record.started_at).total_seconds():.2f} s before "
                    f"{describe(bench, latest)} ended (at {bench.rel(latest_end)}; workers "
                    f"{latest.worker}, {record.worker}){nearby(bench, record.started_at)}"
                )
            end = execution_end(bench, record, logs)
            if latest is None or end > latest_end:
                latest, latest_end = record, end
    return found


def check_left_running(bench: Bench, runs: list[Run]) -> list[str]:
    assert bench.settle_started is not None
    return [
        f"{bench.schedules[r.schedule].name} #{r.iteration} ({r.trigger}) running since "
        f"{bench.rel(r.started_at)} on {r.worker}{nearby(bench, r.started_at, after=5.0)}"
        for r in runs
        if r.status == Status.RUNNING and r.started_at < bench.settle_started
    ]


def check_liveness(bench: Bench) -> tuple[list[str], int]:
    """Streaks of samples where a running schedule has no live orchestration."""
    found: list[str] = []
    unreachable = 0
    streaks: dict[int, tuple[Sample, Sample, OrchestrationStatus | None]] = {}
    spans = {pk: [(a.at, a.end) for a in actions_of(bench, pk)] for pk in bench.schedules}

    def close(pk: int) -> None:
        if pk in streaks:
            first, last, status = streaks.pop(pk)
            if last.ended - first.ended > LIVENESS_LIMIT:
                found.append(
                    f"{bench.schedules[pk].name}: desired running, engine "
                    f"{status.name.lower() if status else 'has no instance'} from "
                    f"{bench.rel(first.ended)} to {bench.rel(last.ended)} "
                    f"({(last.ended - first.ended).total_seconds():.1f} s)"
                    f"{nearby(bench, first.ended)}"
                )

    for sample in bench.samples:
        in_fault = any(window.overlaps(sample.started, sample.ended) for window in bench.windows)
        unreachable += sample.statuses is None and not in_fault
        for pk in bench.schedules:
            acting = any(at <= sample.ended and end >= sample.started for at, end in spans[pk])
            if sample.statuses is None or in_fault or acting:
                close(pk)
                continue
            status = sample.statuses.get(pk)
            missing = sample.desired.get(pk) == RUNNING and status not in instances.LIVE_STATUSES
            if not missing:
                close(pk)
            elif pk in streaks:
                streaks[pk] = (streaks[pk][0], sample, status)
            else:
                streaks[pk] = (sample, sample, status)
    for pk in list(streaks):
        close(pk)
    return found, unreachable


def check_final(
    bench: Bench, schedules: dict[int, dict[str, Any]], states: dict[str, OrchestrationStatus]
) -> tuple[list[str], list[str]]:
    stopped_live, mismatched = [], []
    for pk, info in bench.schedules.items():
        row = schedules[pk]
        status = states.get(row["instance_id"])
        live = status in instances.LIVE_STATUSES
        engine = status.name.lower() if status else "no instance"
        if row["desired_state"] == STOPPED and live:
            stopped_live.append(f"{info.name}: stopped, engine {engine}")
        last = actions_of(bench, pk)[-1]
        expected = bench.desired[pk]
        engine_ok = {
            RUNNING: live and status != OrchestrationStatus.SUSPENDED,
            # Paused: suspended, or no orchestration at all (an engine restart lost it; nothing
            # runs either way, and resuming starts one).
            PAUSED: status == OrchestrationStatus.SUSPENDED or status is None,
            STOPPED: not live,
        }[expected]
        if row["desired_state"] != expected or not engine_ok:
            assert bench.checked_at is not None
            since_last = (bench.checked_at - last.at).total_seconds()
            mismatched.append(
                f"{info.name}: last action {last.kind} {bench.rel(last.at)}–"
                f"{bench.rel(last.done)} ({last.before} → {last.after}, outcome {last.outcome}); "
                f"expected {expected}, database {row['desired_state']}, engine {engine}"
                f"{nearby(bench, last.at, before=1.0, after=since_last)}"
            )
    return stopped_live, mismatched


def check_http(bench: Bench) -> list[str]:
    found = [
        f"GET {r.path} → {r.status} {bench.rel(r.at)}: {r.note}{nearby(bench, r.at)}"
        for r in bench.requests
        if r.status >= 500 and not database_was_away(bench, r)
    ]
    found += [
        f"{a.kind} {bench.schedules[a.schedule or 0].name} {bench.rel(a.at)} raised "
        f"{a.detail.get('error')}{nearby(bench, a.at)}"
        for a in bench.actions
        if a.outcome == "raised"
    ]
    return found


def database_was_away(bench: Bench, request: Any) -> bool:
    """A 503 "Database unavailable" during a database fault (or its pool's wait after it): the
    answer the site gives while its database is away, not a failure."""
    if request.status != 503 or request.note != "Database unavailable":
        return False
    return any(
        fault.at - timedelta(seconds=1) <= request.at <= fault.end + timedelta(seconds=5)
        for fault in bench.faults
        if fault.kind in DATABASE_FAULT_KINDS
    )


INVARIANTS = {
    "never_early_planned_at": "never early: no run started before its planned_at",
    "never_early_derived": "never early (derived): no scheduled run before the slot its "
    "predecessor planned",
    "unrecorded_missed_slots": "every slot ran or is in a skipped row (no silent gap)",
    "iteration_twice": "no iteration twice (rows, or finished twice in the workers' logs)",
    "concurrent_runs": "never two runs of one schedule at once",
    "left_running": "no run left running after settling",
    "alive_without_orchestration": "no running schedule without a live orchestration for "
    f"more than {LIVENESS_LIMIT.total_seconds():g} s",
    "stopped_with_orchestration": "no live orchestration for a stopped schedule (settled)",
    "action_outcome_mismatch": "each schedule as its last operator action left it (settled)",
    "http_500": "no HTTP 500 (pages, and operator actions that raised)",
    "rows_miscounted": "a run's counts equal what it deleted (each row the bench made is still "
    "there, or gone and counted by one run)",
}


def check(bench: Bench, observed: Observed) -> tuple[dict[str, list[str] | None], dict[str, int]]:
    """Every invariant's violations (None: not measurable), and a few counts for the report."""
    runs = observed.runs
    logs = read_logs(bench)
    iterations = check_iterations(bench, observed.duplicates, logs)
    finish_lines = sum(len(where) for where in logs.finished.values())
    liveness, unreachable = check_liveness(bench)
    stopped_live, mismatched = check_final(bench, observed.schedules, observed.states)
    findings = {
        "never_early_planned_at": (
            check_never_early_planned(bench, runs) if observed.measurable else None
        ),
        "never_early_derived": check_never_early_derived(bench, runs),
        "unrecorded_missed_slots": check_missed_slots(bench, runs),
        "iteration_twice": iterations,
        "concurrent_runs": check_concurrent(bench, runs, logs),
        "left_running": check_left_running(bench, runs),
        "alive_without_orchestration": liveness,
        "stopped_with_orchestration": stopped_live,
        "action_outcome_mismatch": mismatched,
        "http_500": check_http(bench),
        "rows_miscounted": list(bench.rows.found),
    }
    return findings, {"finish_lines": finish_lines, "unreachable_samples": unreachable}
