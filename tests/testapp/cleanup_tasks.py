"""A custom cleanup task, registered the way a project's own app would register one."""

import threading
import time

from django.core.exceptions import ValidationError
from django.db import transaction

from cleanups.registry import (
    CleanupContext,
    Params,
    cleanup_task,
    delete_in_batches,
    reject_unknown,
)
from tests.testapp.models import Event


def validate_params(params: Params) -> Params:
    reject_unknown(params, {"kind"})
    if not isinstance(params.get("kind"), str):
        raise ValidationError("kind is required: the kind of events to delete.")
    return params


@cleanup_task(
    "testapp_events_of_kind",
    "Delete every Event of one kind (a custom task from the tests' app).",
    validate=validate_params,
    deletes=["testapp.Event"],
)
def events_of_kind(ctx: CleanupContext) -> str:
    events = Event.objects.filter(kind=ctx.params["kind"])
    if ctx.dry_run:
        ctx.would_delete("testapp.Event", events.count())
        return "Counted."
    with transaction.atomic():
        count, _ = events.delete()
        ctx.deleted("testapp.Event", count)
    return f"Deleted {count} {ctx.params['kind']} event(s)."


FLAKY_FAILURES: dict[str, int] = {}


@cleanup_task("testapp_always_fails", "Always raises (for failure-streak tests).")
def always_fails(ctx: CleanupContext) -> str:
    raise RuntimeError("the disk is on fire")


@cleanup_task("testapp_flaky", 'Fails the first {"failures": n} times, then succeeds.')
def flaky(ctx: CleanupContext) -> str:
    key = str(ctx.run.schedule_id if ctx.run else "")
    FLAKY_FAILURES[key] = FLAKY_FAILURES.get(key, 0) + 1
    if FLAKY_FAILURES[key] <= ctx.params.get("failures", 1):
        raise RuntimeError(f"flaky failure {FLAKY_FAILURES[key]}")
    return "Worked this time."


@cleanup_task(
    "testapp_delete_sessions",
    "Deletes every session through delete_in_batches without declaring it (for the rule that "
    "a run may delete only allowed models its editor may delete).",
)
def delete_sessions(ctx: CleanupContext) -> str:
    from django.contrib.sessions.models import Session

    delete_in_batches(ctx, Session.objects.all())
    return "Deleted sessions."


@cleanup_task(
    "testapp_slow_deleter",
    'Deletes one Event every {"pause": s} seconds until none is left or its time is up.',
    deletes=["testapp.Event"],
)
def slow_deleter(ctx: CleanupContext) -> str:
    while not ctx.out_of_time():
        event = Event.objects.order_by("pk").first()
        if event is None:
            return "All gone."
        with transaction.atomic():
            event.delete()
            ctx.deleted("testapp.Event", 1)
        time.sleep(ctx.params.get("pause", 0.05))
    return "Out of time."


EXECUTING: dict[str, int] = {"now": 0, "most": 0}
_EXECUTING_LOCK = threading.Lock()


@cleanup_task("testapp_counts_overlap", 'Sleeps {"seconds": s}, counting overlapping executions.')
def counts_overlap(ctx: CleanupContext) -> str:
    with _EXECUTING_LOCK:
        EXECUTING["now"] += 1
        EXECUTING["most"] = max(EXECUTING["most"], EXECUTING["now"])
    try:
        time.sleep(ctx.params.get("seconds", 0.5))
    finally:
        with _EXECUTING_LOCK:
            EXECUTING["now"] -= 1
    return "Slept."


BLOCKING: dict[str, int] = {"now": 0}
RELEASE = threading.Event()


@cleanup_task("testapp_blocks", "Waits until the tests release it (at most a minute).")
def blocks(ctx: CleanupContext) -> str:
    with _EXECUTING_LOCK:
        BLOCKING["now"] += 1
    try:
        RELEASE.wait(60)
    finally:
        with _EXECUTING_LOCK:
            BLOCKING["now"] -= 1
    return "Released."
