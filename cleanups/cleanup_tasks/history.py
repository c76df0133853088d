"""The built-in tasks that clean up after cleanups itself: run records, finished orchestrations,
and the sample's task that deletes nothing."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db import models

from cleanups import instances
from cleanups.cleanup_tasks.common import age_cutoff, with_batch_size
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.registry import (
    CleanupContext,
    Params,
    cleanup_task,
    delete_in_batches,
    int_param,
    number_param,
    positive_days,
    reject_unknown,
)

logger = logging.getLogger("cleanups.cleanup_tasks")

# prune_run_history --------------------------------------------------------------------------


def _validate_prune_run_history(params: Params) -> Params:
    reject_unknown(params, {"keep_last", "keep_failed_last", "older_than_days", "batch_size"})
    keep_last = int_param(params, "keep_last", 100, 0, 10_000_000)
    keep_failed_last = int_param(params, "keep_failed_last", max(1000, keep_last), 0, 10_000_000)
    cleaned = {
        "keep_last": keep_last,
        "keep_failed_last": keep_failed_last,
        "older_than_days": positive_days(params, "older_than_days", None),
    }
    return with_batch_size(cleaned, params)


@cleanup_task(
    "prune_run_history",
    'Prune our own run records: {"keep_last": 100, "keep_failed_last": 1000, '
    '"older_than_days": 30} per schedule; never a run still running.',
    validate=_validate_prune_run_history,
    deletes=["cleanups.CleanupRun"],
)
def prune_run_history(ctx: CleanupContext) -> str:
    params = ctx.params
    for schedule_id in CleanupSchedule.objects.values_list("pk", flat=True):
        if ctx.out_of_time():
            break
        # Never a run still running, one held that waits for a person, or one whose archive
        # is kept (restoring reads the record; prune_archives empties it first).
        runs = (
            CleanupRun.objects.filter(schedule_id=schedule_id)
            .exclude(status=CleanupRun.Status.RUNNING)
            .exclude(
                status=CleanupRun.Status.HELD, approved_at__isnull=True, rejected_at__isnull=True
            )
            .filter(archive_parts=[])
        )
        keep_from = _nth_newest_iteration(runs, params["keep_last"])
        keep_failed_from = _nth_newest_iteration(
            runs.filter(status=CleanupRun.Status.FAILED), params["keep_failed_last"]
        )
        candidates = runs.filter(iteration__lt=keep_from).exclude(
            status=CleanupRun.Status.FAILED, iteration__gte=keep_failed_from
        )
        if params["older_than_days"] is not None:
            candidates = candidates.filter(started_at__lt=age_cutoff(params["older_than_days"]))
        delete_in_batches(ctx, candidates, params.get("batch_size"))
    verb = "Would delete" if ctx.dry_run else "Deleted"
    return f"{verb} {ctx.items} run record(s)."


def _nth_newest_iteration(runs: models.QuerySet[Any], keep: int) -> int:
    """The iteration of the keep-th newest run: runs before it may go (all may, if keep=0)."""
    if keep == 0:
        return 2**62
    nth = runs.order_by("-iteration").values_list("iteration", flat=True)[keep - 1 : keep]
    found = list(nth)
    return found[0] if found else 0


# purge_orchestrations -----------------------------------------------------------------------


def _validate_purge_orchestrations(params: Params) -> Params:
    reject_unknown(params, {"older_than_days"})
    return {"older_than_days": positive_days(params, "older_than_days", 7)}


@cleanup_task(
    "purge_orchestrations",
    "Purge finished (completed, failed, terminated) orchestrations older than an age from the "
    'task hub: {"older_than_days": 7}. Never touches a running instance.',
    validate=_validate_purge_orchestrations,
)
def purge_orchestrations(ctx: CleanupContext) -> str:
    created_before = age_cutoff(ctx.params["older_than_days"])
    if ctx.dry_run:
        count = instances.count_finished_before(created_before)
        ctx.would_delete("orchestrations", count)
        return f"Would purge {count} orchestration(s)."
    if ctx.guard is not None:  # counted first, as rows are: the guard may hold the run
        count = instances.count_finished_before(created_before)
        ctx.guard("orchestrations", {"orchestrations": count}, {}, list)
    purged = instances.purge_finished_before(created_before)
    ctx.deleted("orchestrations", purged)
    return f"Purged {purged} orchestration(s)."


# sample -------------------------------------------------------------------------------------


def _validate_sample(params: Params) -> Params:
    reject_unknown(params, {"seconds"})
    return {"seconds": number_param(params, "seconds", 5, 0, 3600)}


@cleanup_task(
    "sample",
    "The eternal-orchestrations sample's activity: log, wait params.seconds (default 5), "
    "delete nothing.",
    validate=_validate_sample,
)
def sample(ctx: CleanupContext) -> str:
    seconds = ctx.params["seconds"]
    logger.info("Performing sample cleanup (waiting %s s)", seconds)
    time.sleep(seconds)
    return f"Sample cleanup waited {seconds:g} s."
