"""The eternal orchestration. Deterministic: no database, clock, randomness or I/O here.

Everything the loop needs to know about its schedule (when the next run is, whether to go
on, how often to retry) comes back from the cleanup activity, so it is recorded in history and
an admin edit applies from the next iteration without a restart.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from durabletask import task

from cleanups.contract import RUN_NOW_EVENT
from cleanups.durable import activities

SAMPLE_LAST_ITERATION = 5  # the sample's loop: five iterations, then complete
DEFERRED_SECONDS = 1.0  # a run deferred by a pause is planned again this long after the resume
RETRY_FIRST_SECONDS = 1.0  # a failed cleanup's first retry comes this long after; then doubling


def periodic_cleanup(ctx: task.OrchestrationContext, input: Any) -> Any:
    """Wait for the next run (or a "run now" event), run the cleanup, continue as new."""
    if not isinstance(input, dict):
        return (yield from _sample_loop(ctx, input))

    schedule_id = input["schedule_id"]
    iteration = input["iteration"]
    run_at = input.get("run_at")
    trigger = input.get("trigger", "scheduled")
    triggered_by = ""
    run_now = None
    if input.get("run_now") is not None:
        # Asked for when the previous run was due at the same instant: run it first, now.
        trigger, triggered_by = "manual", input["run_now"].get("by", "")
    elif run_at:
        # Asked for before there is any wait: a "run now" carried over from the previous
        # execution (save_events), or with the run handed over ahead and no timer to race.
        run_now = ctx.wait_for_external_event(RUN_NOW_EVENT)
        if run_now.is_complete:
            trigger, triggered_by = "manual", (run_now.get_result() or {}).get("by", "")
    # The run goes to a worker `lead_seconds` ahead; the activity starts it at run_at exactly.
    lead = timedelta(seconds=input.get("lead_seconds") or 0)
    # Never early: a timer that wakes before its time (an engine that completed it with a stale
    # one, a clock step) waits again for the remainder.
    while trigger != "manual" and run_at and _naive_utc(run_at) - lead > ctx.current_utc_datetime:
        ctx.set_custom_status({"iteration": iteration, "state": "waiting", "next_run_at": run_at})
        timer = ctx.create_timer(_naive_utc(run_at) - lead)
        winner = yield task.when_any([timer, run_now])
        if winner is run_now:
            # An extra run right away; the schedule's own next run stays where it was.
            trigger, triggered_by = "manual", (run_now.get_result() or {}).get("by", "")
            break

    limit = input.get("max_run_seconds") or 0
    begins = ctx.current_utc_datetime
    if trigger != "manual" and run_at:
        begins = max(begins, _naive_utc(run_at))  # handed over ahead: the limit counts from then
    if begins > ctx.current_utc_datetime:  # its worker holds it until its time
        ctx.set_custom_status({"iteration": iteration, "state": "waiting", "next_run_at": run_at})
    else:
        ctx.set_custom_status({"iteration": iteration, "state": "running", "items_so_far": 0})
    deadline = begins + timedelta(seconds=limit) if limit else None
    step = {
        "schedule_id": schedule_id,
        "iteration": iteration,
        "part": 0,
        "trigger": trigger,
        "triggered_by": triggered_by,
        "planned_at": run_at,
        "max_retries": input.get("max_retries", 0),
        "generation": input.get("generation"),
        "deadline": _iso(deadline) if deadline else None,
    }
    retry = _retry_policy(input.get("max_retries", 0))
    result = yield from _run_part(ctx, step, retry, deadline)
    if result.get("deferred"):
        # Paused while its worker waited for the planned time: it did not run. Once resumed
        # (this timer fires only then), the same iteration is planned again, and the missed-run
        # policy applies to it if its time went by.
        yield ctx.create_timer(ctx.current_utc_datetime + timedelta(seconds=DEFERRED_SECONDS))
        ctx.continue_as_new({**input, "run_now": _carried(run_now, trigger)}, save_events=True)
        return None
    while result.get("more"):
        # A long cleanup resumes in parts; each part's progress shows in the custom status.
        ctx.set_custom_status(
            {"iteration": iteration, "state": "running", "items_so_far": result["items"]}
        )
        # The activity may have turned the run into a catch-up of a later iteration.
        step = {**step, "part": result["part"], "iteration": result["iteration"]}
        result = yield from _run_part(ctx, step, retry, deadline)

    if not result["continue"]:
        ctx.set_custom_status(
            {"iteration": iteration, "state": "finished", "reason": result["reason"]}
        )
        return {"iterations": iteration, "reason": result["reason"]}

    ctx.set_custom_status(
        {
            "iteration": iteration,
            "state": "waiting",
            "last_status": result["status"],
            "next_run_at": result["next_run_at"],
        }
    )
    # A "run now" that came in with the timer, or during the run, completed the waiter this loop
    # no longer looks at: the next loop runs it first. (One that comes later is carried by the
    # engine: save_events.)
    ctx.continue_as_new(
        {
            "schedule_id": schedule_id,
            "iteration": result.get("next_iteration", iteration + 1),
            "run_at": result["next_run_at"],
            "trigger": result.get("next_trigger", "scheduled"),
            "max_retries": result.get("max_retries", 0),
            "max_run_seconds": result.get("max_run_seconds", limit),
            "lead_seconds": result.get("lead_seconds", input.get("lead_seconds", 0)),
            "generation": input.get("generation"),
            "run_now": _carried(run_now, trigger),
        },
        save_events=True,
    )
    return None


def _carried(run_now: task.Task[Any] | None, trigger: str) -> dict[str, Any] | None:
    """A "run now" that came in and that this execution did not run: the next one runs it."""
    if run_now is None or not run_now.is_complete or trigger == "manual":
        return None
    return run_now.get_result() or {}


def _run_part(
    ctx: task.OrchestrationContext,
    step: dict[str, Any],
    retry: task.RetryPolicy | None,
    deadline: datetime | None,
) -> Any:
    """One activity call of the run, raced against the run's deadline: past it, the run is
    recorded as timed out and the loop goes on (a late result of the abandoned call is ignored)."""
    if deadline is not None and ctx.current_utc_datetime >= deadline:
        return (yield ctx.call_activity(activities.time_out_run, input=step))
    work = ctx.call_activity(activities.run_cleanup, input=step, retry_policy=retry)
    if deadline is None:
        return (yield work)
    timeout = ctx.create_timer(deadline)
    winner = yield task.when_any([work, timeout])
    if winner is timeout:
        return (yield ctx.call_activity(activities.time_out_run, input=step))
    return work.get_result()


def _retry_policy(max_retries: int) -> task.RetryPolicy | None:
    if not max_retries:
        return None
    return task.RetryPolicy(
        first_retry_interval=timedelta(seconds=RETRY_FIRST_SECONDS),
        max_number_of_attempts=max_retries + 1,
        backoff_coefficient=2.0,
        max_retry_interval=timedelta(minutes=5),
    )


def _sample_loop(ctx: task.OrchestrationContext, counter: Any) -> Any:
    """The sample's own loop, for a bare integer input: cleanup, timer, continue while below 5."""
    counter = counter if isinstance(counter, int) and not isinstance(counter, bool) else 1
    result = yield ctx.call_activity(activities.sample_cleanup, input=counter)
    yield ctx.create_timer(ctx.current_utc_datetime + timedelta(seconds=result["wait_seconds"]))
    if counter < SAMPLE_LAST_ITERATION:
        ctx.continue_as_new(counter + 1)
        return None
    return f"Completed {counter} iterations"


def _iso(moment: datetime) -> str:
    """The orchestration clock's naive UTC as an ISO time with its offset, for activities."""
    return moment.replace(tzinfo=UTC).isoformat()


def _naive_utc(iso: str) -> datetime:
    """Parse an ISO time from an activity into the naive UTC the orchestration clock uses."""
    moment = datetime.fromisoformat(iso)
    if moment.utcoffset() is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment
