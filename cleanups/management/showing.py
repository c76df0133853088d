"""What the ``schedules`` command shows of a schedule and its runs: the same keys in its tables
and its JSON, always."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.utils import timezone

from cleanups.formatting import human_duration
from cleanups.instances import EngineUnavailable, runtime_status_label, state_of
from cleanups.models import CleanupRun, CleanupSchedule

UNREACHABLE = "unreachable"


def engine_state(schedule: CleanupSchedule) -> str:
    """The engine's state of one schedule's orchestration as the admin labels it."""
    try:
        state = state_of(schedule)
    except EngineUnavailable:
        return UNREACHABLE
    return engine_label(schedule, {schedule.instance_id: state} if state else {})


def engine_label(schedule: CleanupSchedule, states: dict[str, Any] | None) -> str:
    if schedule.recovering_since:
        return f"recovering ({first_line(schedule.last_error)})"
    if states is None:
        return UNREACHABLE
    return runtime_status_label(states.get(schedule.instance_id))


def listed(schedule: CleanupSchedule, engine_state: str) -> dict[str, Any]:
    """One schedule of `list --json`: these keys, always."""
    return {
        "name": schedule.name,
        "task": schedule.task,
        "dry_run": schedule.dry_run,
        "cadence": schedule.cadence,
        "interval_seconds": schedule.interval.total_seconds(),
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "desired_state": schedule.desired_state,
        "engine_state": engine_state,
        "status_reason": schedule.status_reason,
        "iteration": schedule.current_iteration,
        "last_run_status": getattr(schedule, "last_run_status", None),
        "last_run_started_at": iso(getattr(schedule, "last_run_started_at", None)),
        "next_run_at": iso(schedule.upcoming_run_at),
    }


def configuration(schedule: CleanupSchedule, engine_state: str) -> dict[str, Any]:
    """What `show` tells of a schedule: how it is defined, then how it stands."""
    return {
        "name": schedule.name,
        "task": schedule.task,
        "params": schedule.params,
        "dry_run": schedule.dry_run,
        "cadence": schedule.cadence,
        "interval_seconds": schedule.interval.total_seconds(),
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "start_at": iso(schedule.start_at),
        "end_at": iso(schedule.end_at),
        "max_iterations": schedule.max_iterations,
        "missed_runs": schedule.missed_runs,
        "max_retries": schedule.max_retries,
        "max_run_seconds": schedule.run_limit,
        "pause_after_failures": schedule.pause_after_failures,
        "notify_email": schedule.notify_email,
        "changed_by": schedule.changed_by.get_username() if schedule.changed_by else None,
        "desired_state": schedule.desired_state,
        "status_reason": schedule.status_reason,
        "engine_state": engine_state,
        "instance_id": schedule.instance_id,
        "iteration": schedule.current_iteration,
        "start_iteration": schedule.start_iteration,
        "next_run_at": iso(schedule.upcoming_run_at),
        "consecutive_failures": schedule.consecutive_failures,
        "last_error": schedule.last_error,
    }


def run(run: CleanupRun) -> dict[str, Any]:
    """One run record for `runs --json` and `show --json`: these keys, always."""
    return {
        "iteration": run.iteration,
        "status": run.status,
        "trigger": run.trigger,
        "triggered_by": run.triggered_by,
        "reason": run.reason,
        "dry_run": run.dry_run,
        "planned_at": iso(run.planned_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "duration_seconds": run.duration.total_seconds() if run.duration else None,
        "items_deleted": run.items_deleted,
        "attempts": run.attempts,
        "message": run.message,
        "error": run.error,
        "worker": run.worker,
    }


def cadence(schedule: CleanupSchedule) -> str:
    if schedule.cadence == CleanupSchedule.Cadence.CRON:
        return f"cron {schedule.cron} ({schedule.timezone})"
    kind = "rate" if schedule.cadence == CleanupSchedule.Cadence.FIXED_RATE else "delay"
    return f"every {human_duration(schedule.interval)} ({kind})"


def last_run(schedule: CleanupSchedule) -> str:
    status = getattr(schedule, "last_run_status", None)
    if not status:
        return "–"
    return f"{status} {when(schedule.last_run_started_at)}"  # type: ignore[attr-defined]


def next_run(schedule: CleanupSchedule) -> str:
    if schedule.desired_state == CleanupSchedule.DesiredState.PAUSED:
        return "paused"
    return when(schedule.upcoming_run_at)


def when(moment: datetime | None) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "–"


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def text(value: object) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return first_line(str(value)) if isinstance(value, str) else str(value)


def first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:120] if lines else ""
