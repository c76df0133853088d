"""What a control action did, and how it is told to an operator."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta

from cleanups.models import CleanupSchedule


class Outcome(enum.Enum):
    STARTED = "started"
    ALREADY_RUNNING = "already running"
    TERMINATED = "terminated"
    PAUSED = "paused"
    RESUMED = "resumed"
    RUN_REQUESTED = "run requested"
    NOT_RUNNING = "not running"
    REFUSED = "refused"  # it cannot run as defined: stopped, with why
    ENGINE_UNREACHABLE = "engine unreachable"


@dataclass(frozen=True)
class ControlOutcome:
    schedule: CleanupSchedule
    outcome: Outcome
    message: str


@dataclass(frozen=True)
class BulkOutcome:
    """What a bulk action did: how many schedules it applies to and one line for the operator."""

    changed: int
    unchanged: int
    message: str
    refused: int = 0


def started(schedule: CleanupSchedule, iteration: int) -> ControlOutcome:
    return ControlOutcome(
        schedule, Outcome.STARTED, f"“{schedule}” started at iteration {iteration}."
    )


def already_running(schedule: CleanupSchedule) -> ControlOutcome:
    return ControlOutcome(
        schedule, Outcome.ALREADY_RUNNING, f"“{schedule}” is already running; nothing new started."
    )


def unreachable(schedule: CleanupSchedule, state: str) -> ControlOutcome:
    return ControlOutcome(
        schedule,
        Outcome.ENGINE_UNREACHABLE,
        f"“{schedule}”: engine unreachable. Recorded as {state}; the worker acts on it when "
        "the engine is back.",
    )


def plural(count: int, what: str) -> str:
    return f"{count:,} {what}{'' if count == 1 else 's'}"


def summary(parts: list[tuple[int, str]]) -> str:
    said = [f"{plural(count, 'schedule')} {verb}" for count, verb in parts if count]
    return "; ".join(said) + "." if said else "Nothing to do."


def duration_words(span: timedelta) -> str:
    seconds = round(span.total_seconds())
    if seconds < 120:
        return plural(seconds, "second")
    if seconds < 7200:
        return plural(round(seconds / 60), "minute")
    return plural(round(seconds / 3600), "hour")
