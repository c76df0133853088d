"""The durable contract: the names both sides of the engine share, and nothing else.

The schedule control starts orchestrations and raises events by these names; the durable
runtime registers its orchestrator and activities under them (a test holds the two together).
Renaming one breaks every orchestration already in flight: they replay by name.
"""

from __future__ import annotations

# Every schedule's orchestration instance id is this prefix and the schedule's primary key.
INSTANCE_ID_PREFIX = "cleanup-schedule-"
# The eternal orchestration (the sample's name).
ORCHESTRATION_NAME = "periodic_cleanup"
# Its activities: one part of a run; recording a run that outlived its limit; the sample's.
RUN_CLEANUP_ACTIVITY = "run_cleanup"
TIME_OUT_RUN_ACTIVITY = "time_out_run"
SAMPLE_CLEANUP_ACTIVITY = "sample_cleanup"
# The external event of "run now": {"by": who asked}.
RUN_NOW_EVENT = "run_now"


class WorkerStopping(Exception):
    """This worker is shutting down: it begins no run and waits for none (the engine delivers
    the work again, to a worker that stays)."""
