"""The eternal orchestration. Deterministic: no database, clock, randomness or I/O here.

Everything the loop needs to know about its schedule (what to wait, whether to go on) comes
back from the cleanup activity, so it is recorded in history and an admin edit applies from
the next iteration without a restart.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from durabletask import task

from cleanups.durable import activities

SAMPLE_LAST_ITERATION = 5  # the sample's loop: five iterations, then complete


def periodic_cleanup(ctx: task.OrchestrationContext, input: Any) -> Any:
    """Run a schedule's cleanup, wait on a durable timer, continue as new with the next iteration."""
    if not isinstance(input, dict):
        return (yield from _sample_loop(ctx, input))

    schedule_id = input["schedule_id"]
    iteration = input["iteration"]
    if run_at := input.get("run_at"):
        # A restarted schedule waits only what was left until its next run.
        fire_at = _naive_utc(run_at)
        if fire_at > ctx.current_utc_datetime:
            yield ctx.create_timer(fire_at)

    ctx.set_custom_status({"iteration": iteration, "state": "running", "items_so_far": 0})
    step = {"schedule_id": schedule_id, "iteration": iteration, "part": 0}
    result = yield ctx.call_activity(activities.run_cleanup, input=step)
    while result.get("more"):
        # A long cleanup resumes in parts; each part's progress shows in the custom status.
        ctx.set_custom_status(
            {"iteration": iteration, "state": "running", "items_so_far": result["items"]}
        )
        step = {**step, "part": result["part"]}
        result = yield ctx.call_activity(activities.run_cleanup, input=step)
    if not result["continue"]:
        ctx.set_custom_status(
            {"iteration": iteration, "state": "finished", "reason": result["reason"]}
        )
        return {"iterations": iteration, "reason": result["reason"]}

    next_run_at = result["next_run_at"]
    ctx.set_custom_status(
        {
            "iteration": iteration,
            "state": "waiting",
            "last_status": result["status"],
            "next_run_at": next_run_at,
        }
    )
    yield ctx.create_timer(_naive_utc(next_run_at))
    ctx.continue_as_new({"schedule_id": schedule_id, "iteration": iteration + 1})
    return None


def _sample_loop(ctx: task.OrchestrationContext, counter: Any) -> Any:
    """The sample's own loop, for a bare integer input: cleanup, timer, continue while below 5."""
    counter = counter if isinstance(counter, int) and not isinstance(counter, bool) else 1
    result = yield ctx.call_activity(activities.sample_cleanup, input=counter)
    yield ctx.create_timer(ctx.current_utc_datetime + timedelta(seconds=result["wait_seconds"]))
    if counter < SAMPLE_LAST_ITERATION:
        ctx.continue_as_new(counter + 1)
        return None
    return f"Completed {counter} iterations"


def _naive_utc(iso: str) -> datetime:
    """Parse an ISO time from an activity into the naive UTC the orchestration clock uses."""
    moment = datetime.fromisoformat(iso)
    if moment.utcoffset() is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment
