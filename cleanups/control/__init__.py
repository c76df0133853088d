"""Schedule control: write the desired state first, then ask the engine. No request needed.

One schedule at a time (``single``), or a fleet in one statement with the engine calls on a
bounded pool (``bulk``, ``pool``); the admin and the ``schedules`` command apply them through
``act``. An engine that cannot be reached is an outcome, not an exception: the desired state is
already recorded and runworker's reconciler finishes the job once the engine is back.
"""

from cleanups.control.acting import ONE_BY_ONE, Acted, Action, act, actions
from cleanups.control.approvals import (
    APPROVE_PERMISSION,
    DecisionRefused,
    approve_run,
    reject_run,
)
from cleanups.control.bulk import (
    pause_schedules,
    restart_schedules,
    resume_schedules,
    run_schedules_now,
    start_schedules,
    terminate_schedules,
)
from cleanups.control.common import (
    ENDED_BETWEEN_ATTEMPTS,
    PAUSED_BETWEEN_ATTEMPTS,
    TERMINATED_BY_OPERATOR,
    start_orchestration,
    stop_for_its_cadence,
)
from cleanups.control.outcomes import BulkOutcome, ControlOutcome, Outcome
from cleanups.control.pool import BULK_ENGINE_THREADS, wait_for_bulk_engine_calls
from cleanups.control.single import (
    pause_schedule,
    restart_schedule,
    resume_schedule,
    run_now,
    start_schedule,
    terminate_schedule,
)

__all__ = [
    "APPROVE_PERMISSION",
    "BULK_ENGINE_THREADS",
    "ENDED_BETWEEN_ATTEMPTS",
    "ONE_BY_ONE",
    "PAUSED_BETWEEN_ATTEMPTS",
    "TERMINATED_BY_OPERATOR",
    "Acted",
    "Action",
    "BulkOutcome",
    "ControlOutcome",
    "DecisionRefused",
    "Outcome",
    "act",
    "actions",
    "approve_run",
    "pause_schedule",
    "pause_schedules",
    "reject_run",
    "restart_schedule",
    "restart_schedules",
    "resume_schedule",
    "resume_schedules",
    "run_now",
    "run_schedules_now",
    "start_orchestration",
    "start_schedule",
    "start_schedules",
    "stop_for_its_cadence",
    "terminate_schedule",
    "terminate_schedules",
    "wait_for_bulk_engine_calls",
]
