"""The app's models: schedules operators manage, the run records their runs write, workers'
heartbeats and alert deliveries. State and small state methods only: a model imports leaves and
the task API, never a service."""

from cleanups.contract import INSTANCE_ID_PREFIX
from cleanups.models.alerts import AlertDelivery
from cleanups.models.holds import CleanupHold, HoldQuerySet
from cleanups.models.runs import CleanupRun, RunQuerySet
from cleanups.models.schedule_queries import ScheduleQuerySet
from cleanups.models.schedules import (
    MIN_INTERVAL,
    CleanupSchedule,
    _default_timezone,  # migration 0003 names it here
)
from cleanups.models.workers import ReconcilerLease, WorkerHeartbeat

__all__ = [
    "INSTANCE_ID_PREFIX",
    "MIN_INTERVAL",
    "AlertDelivery",
    "CleanupHold",
    "CleanupRun",
    "CleanupSchedule",
    "HoldQuerySet",
    "ReconcilerLease",
    "RunQuerySet",
    "ScheduleQuerySet",
    "WorkerHeartbeat",
    "_default_timezone",
]
