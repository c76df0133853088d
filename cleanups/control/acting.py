"""The control actions as the admin and the ``schedules`` command offer them, and the one way
both apply an action to a selection: a few schedules one by one (an outcome each), many the bulk
way (one statement, one message, the engine calls in the background)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from django.db.models import QuerySet

from cleanups.control import bulk, single
from cleanups.control.outcomes import BulkOutcome, ControlOutcome, Outcome
from cleanups.instances import EngineUnavailable
from cleanups.models import CleanupSchedule

# Up to this many selected schedules, each gets its own outcome (one engine call each, while
# the operator waits); more go the bulk way.
ONE_BY_ONE = 20


@dataclass(frozen=True)
class Action:
    """One control action: for one schedule, and for many at once."""

    help: str
    one: Callable[[CleanupSchedule], ControlOutcome]
    many: Callable[[QuerySet[CleanupSchedule]], BulkOutcome]


def actions(user: str = "") -> dict[str, Action]:
    """The control actions by name; ``user`` is who asks for a run-now (recorded on its run)."""
    return {
        "start": Action(
            "Start schedules afresh (a paused one resumes).",
            single.start_schedule,
            bulk.start_schedules,
        ),
        "pause": Action(
            "Pause schedules: each keeps its place.", single.pause_schedule, bulk.pause_schedules
        ),
        "resume": Action(
            "Resume paused schedules (missed slots follow each one's policy).",
            single.resume_schedule,
            bulk.resume_schedules,
        ),
        "run-now": Action(
            "Run running schedules once now, without moving their next run.",
            lambda schedule: single.run_now(schedule, user),
            lambda queryset: bulk.run_schedules_now(queryset, user),
        ),
        "restart": Action(
            "Terminate and start afresh (new history, the count going on).",
            single.restart_schedule,
            bulk.restart_schedules,
        ),
        "terminate": Action(
            "Stop schedules and end their orchestrations.",
            single.terminate_schedule,
            bulk.terminate_schedules,
        ),
    }


@dataclass(frozen=True)
class Acted:
    """What applying an action did: each schedule's outcome, or the bulk outcome."""

    outcomes: list[ControlOutcome] = field(default_factory=list)
    bulk: BulkOutcome | None = None


def act(
    action: Action, queryset: QuerySet[CleanupSchedule], one_by_one: int | None = None
) -> Acted:
    """Apply ``action`` to the selection: one by one up to ``one_by_one`` (default
    ONE_BY_ONE) schedules, the bulk way beyond."""
    limit = ONE_BY_ONE if one_by_one is None else one_by_one
    if queryset.count() > limit:
        return Acted(bulk=action.many(queryset))
    return Acted(outcomes=[_one(action, schedule) for schedule in queryset])


def _one(action: Action, schedule: CleanupSchedule) -> ControlOutcome:
    try:
        return action.one(schedule)
    except EngineUnavailable:  # the actions say so themselves; this is for one that did not
        return ControlOutcome(
            schedule, Outcome.ENGINE_UNREACHABLE, f"“{schedule}”: engine unreachable."
        )
