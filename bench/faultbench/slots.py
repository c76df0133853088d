"""The checks of when runs come: never early (by planned_at, and derived from the data), and
every slot ran or is in a skipped row, with the slot model they share (as activities.py plans
the next run, with cleanups.cadence)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise

from bench.faultbench.environment import EDIT_UNCERTAINTY, LIVENESS_LIMIT, TOLERANCE
from bench.faultbench.record import (
    NOT_ENDED,
    PAUSED,
    RUN_ONCE,
    RUNNING,
    STOPPED,
    UNREACHABLE,
    Action,
    Bench,
    Config,
    Run,
    Status,
    actions_of,
    describe,
    nearby,
)
from cleanups.cadence import CRON, FIXED_DELAY, Cadence
from cleanups.models import CleanupRun


def configs_at(bench: Bench, pk: int, moment: datetime) -> set[Config]:
    """The schedule's interval and cadence when the worker planned at ``moment``: more than one
    when an edit was in flight within EDIT_UNCERTAINTY of it."""
    info = bench.schedules[pk]
    candidates = {info.config}
    for action in bench.by_schedule(pk, "edit"):
        if action.outcome != "saved":
            continue
        edited = Config(
            timedelta(seconds=action.detail["interval"]), action.detail["cadence"], info.config.cron
        )
        if action.end + EDIT_UNCERTAINTY < moment:
            candidates = {edited}
        elif action.at - EDIT_UNCERTAINTY <= moment:
            candidates.add(edited)
        else:
            break
    return candidates


def anchor_at(bench: Bench, pk: int, moment: datetime) -> datetime | None:
    """The fixed-rate grid's anchor: set by each start, read back after it."""
    anchor = None
    for action in bench.by_schedule(pk, "start"):
        if action.at > moment:
            break
        anchor = action.detail.get("anchor_at") or anchor
    return anchor


def rule(config: Config, anchor: datetime | None) -> Cadence:
    return Cadence(
        kind=config.cadence,
        interval=config.interval,
        anchor=anchor,
        cron=config.cron,
        timezone="UTC",
    )


def next_due(bench: Bench, record: Run, config: Config) -> datetime:
    """When the record's worker planned the next run, as activities.py plans it."""
    info = bench.schedules[record.schedule]
    assert record.finished_at is not None
    cadence = rule(config, anchor_at(bench, record.schedule, record.finished_at))
    end = record.finished_at
    run_once = info.missed_runs == RUN_ONCE
    if record.status == Status.SKIPPED:  # _handle_missed_slots, or an overrun's summary
        return end if run_once else cadence.next_after(end, end)
    following = cadence.next_after(record.started_at, end)
    if config.cadence == FIXED_DELAY or following > end:
        return following
    return end if run_once else cadence.next_after(end, end)  # it overran its slot


def dues(bench: Bench, record: Run) -> list[datetime]:
    assert record.finished_at is not None
    return [
        next_due(bench, record, config)
        for config in configs_at(bench, record.schedule, record.finished_at)
    ]


def period(bench: Bench, pk: int, moment: datetime) -> timedelta:
    """The longest time between two slots around ``moment``: one missed slot's worth."""
    longest = timedelta(0)
    for config in configs_at(bench, pk, moment):
        if config.cadence == CRON:
            cadence = rule(config, None)
            first = cadence.next_after(moment)
            longest = max(longest, cadence.next_after(first) - first)
        else:
            longest = max(longest, config.interval)
    return longest


def engine_back(bench: Bench, moment: datetime) -> datetime:
    """The end of the engine fault that covers ``moment`` (or ``moment``)."""
    for window in bench.windows:
        finish = window.end or bench.checked_at or moment
        if window.start <= moment <= finish:
            return finish
    return moment


def chains(bench: Bench, runs: list[Run]) -> dict[int, list[Run]]:
    """Per schedule, its records by iteration without manual runs (a run-now moves nothing)."""
    by_schedule: dict[int, list[Run]] = defaultdict(list)
    for record in runs:
        if record.trigger != CleanupRun.Trigger.MANUAL:
            by_schedule[record.schedule].append(record)
    return by_schedule


def check_never_early_planned(bench: Bench, runs: list[Run]) -> list[str]:
    return [
        f"{bench.schedules[r.schedule].name} #{r.iteration} ({r.trigger}) started "
        f"{(r.planned_at - r.started_at).total_seconds():.3f} s before its planned_at "
        f"{bench.rel(r.planned_at)}{nearby(bench, r.started_at)}"
        for r in runs
        if r.planned_at is not None and r.started_at < r.planned_at
    ]


def check_never_early_derived(bench: Bench, runs: list[Run]) -> list[str]:
    found = []
    for pk, chain in chains(bench, runs).items():
        info = bench.schedules[pk]
        acts = actions_of(bench, pk)
        for previous, record in pairwise(chain):
            if record.trigger != CleanupRun.Trigger.SCHEDULED or record.status == Status.SKIPPED:
                continue
            if previous.status in NOT_ENDED - {Status.SKIPPED}:
                continue
            if previous.status == Status.SKIPPED and info.missed_runs == RUN_ONCE:
                continue  # its catch-up runs at once, by design
            if previous.finished_at is None:
                continue
            if any(a.at <= record.started_at and a.end >= previous.decided for a in acts):
                continue
            planned = min(dues(bench, previous))
            early = (planned - record.started_at).total_seconds()
            if early > 0.001:
                found.append(
                    f"{info.name} ({info.describe()}) #{record.iteration} started "
                    f"{bench.rel(record.started_at)}, {early:.2f} s before the slot "
                    f"{bench.rel(planned)} planned after {describe(bench, previous)}"
                    f"{nearby(bench, record.started_at)}"
                )
    return found


def gap(
    bench: Bench, pk: int, previous: Run | None, deadline: datetime, until: datetime, what: str
) -> str:
    info = bench.schedules[pk]
    return (
        f"{info.name} ({info.describe()}): after {describe(bench, previous)}, the next run was "
        f"due by {bench.rel(deadline)} (grace and slack included); {what}, "
        f"{(until - deadline).total_seconds():.1f} s later, nothing recorded in between"
        f"{nearby(bench, deadline, before=10.0)}"
    )


# The actions that write the skipped row of a schedule's overdue slots themselves
# (cleanups.runs.missed.record_overdue_slots). A resume's row is its worker's, and plans the
# next run as any.
RECORDS_OVERDUE_SLOTS = {"pause", "restart", "terminate"}


@dataclass
class Walk:
    """Where a schedule stands in the slot walk: its desired state, when its next run is due as
    planned, and the deadline by which a record of it must come (None: none expected)."""

    state: str = STOPPED
    due: datetime | None = None
    deadline: datetime | None = None


def check_missed_slots(bench: Bench, runs: list[Run]) -> list[str]:
    """Walk each schedule's records and state-changing actions in order (see the docstring of
    bench/faults.py)."""
    end = bench.checked_at
    assert end is not None
    found = []
    grid = chains(bench, runs)
    for pk in bench.schedules:
        acts = actions_of(bench, pk)
        walk = Walk()
        previous: Run | None = None
        index = 0
        applied: Action | None = None
        for record in [*grid.get(pk, []), None]:
            moment = end if record is None else record.decided
            # A skipped row covers the gap before it, however late it was written.
            covered = record is not None and record.status == Status.SKIPPED
            while index < len(acts) and acts[index].at < moment:
                action = acts[index]
                index += 1
                late = walk.deadline and walk.deadline < action.at
                if not covered and walk.state == RUNNING and late:
                    assert walk.deadline is not None
                    what = f"then {action.kind} {bench.rel(action.at)}"
                    found.append(gap(bench, pk, previous, walk.deadline, action.at, what))
                    walk.deadline = None
                apply(bench, action, walk)
                applied = action
            if record is None:
                if walk.state == RUNNING and walk.deadline and walk.deadline < end:
                    what = "still nothing when the bench ended (settled)"
                    found.append(gap(bench, pk, previous, walk.deadline, end, what))
                break
            if not covered and walk.state == RUNNING and walk.deadline:
                allowed = walk.deadline
                if record.trigger == CleanupRun.Trigger.CATCH_UP:
                    allowed += period(bench, pk, walk.deadline)  # one missed slot: the catch-up
                if record.started_at > allowed:
                    what = f"then {describe(bench, record)}"
                    found.append(gap(bench, pk, previous, walk.deadline, record.started_at, what))
            previous = record
            if (
                covered
                and applied is not None
                and applied.kind in RECORDS_OVERDUE_SLOTS
                and applied.at <= record.decided <= applied.end
            ):
                # Written by the action itself (an overdue run's slots, recorded by a pause,
                # restart or terminate): the action, not this row, says what is due next.
                continue
            if record.status == Status.RUNNING or record.finished_at is None:
                walk.due = walk.deadline = None  # still running: left_running says so
            else:
                walk.due = max(dues(bench, record))
                walk.deadline = walk.due + TOLERANCE
    return found


def apply(bench: Bench, action: Action, walk: Walk) -> None:
    """The schedule's state, due time and deadline after an operator action."""
    ready = action.end
    if action.outcome == UNREACHABLE:  # the reconciler finishes the job once it is back
        ready = engine_back(bench, ready) + LIVENESS_LIMIT
    if action.kind == "terminate":
        walk.state, walk.due, walk.deadline = STOPPED, None, None
    elif action.kind == "pause":
        walk.state = action.after  # unchanged on a stopped schedule
    elif action.kind == "restart":  # a fresh orchestration runs at once
        walk.state, walk.due = RUNNING, ready
        walk.deadline = past_faults(bench, ready) + TOLERANCE
    elif action.kind in ("resume", "start") and action.before == PAUSED:
        # The orchestration goes on: its pending run when due, at once if that is past.
        walk.state = RUNNING
        walk.deadline = max(ready, walk.due or ready) + TOLERANCE
    elif action.kind == "start" and action.before == STOPPED:
        first = ready
        configs = configs_at(bench, action.schedule or 0, ready)
        if any(config.cadence == CRON for config in configs):
            first = max(rule(config, None).next_after(ready) for config in configs)
        walk.state, walk.due = RUNNING, first
        walk.deadline = past_faults(bench, first) + TOLERANCE


def past_faults(bench: Bench, first: datetime) -> datetime:
    """When a start's first run can come: not while the engine is down or stopped (an engine
    fault that begins before it is due delays it to two reconcile intervals after the engine is
    back). The worker never records a start's first run as late (_handle_missed_slots), so a
    fault's delay of it is no gap; a delay without a fault is."""
    for window in bench.windows:  # in time order
        if window.start <= first + TOLERANCE:
            first = max(first, (window.end or bench.checked_at or first) + LIVENESS_LIMIT)
    return first
