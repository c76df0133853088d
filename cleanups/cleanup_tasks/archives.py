"""The built-in task that deletes old archives (archive before delete), never while a hold
covers them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from cleanups.conf import settings
from cleanups.models import CleanupHold, CleanupRun
from cleanups.registry import CleanupContext, Params, cleanup_task, positive_days, reject_unknown
from cleanups.tasks.archive import archive_storage

TARGET = "archive parts"


def _validate(params: Params) -> Params:
    reject_unknown(params, {"older_than_days"})
    default = float(settings.CLEANUP_ARCHIVE_DAYS)
    return {"older_than_days": positive_days(params, "older_than_days", default or None)}


def _hold_on(run: CleanupRun, holds: list[CleanupHold]) -> CleanupHold | None:
    """A hold covering any part of the run's archive: one on a model the parts hold rows of
    (whatever its filter: the rows inside an archive are not queried), or on a directory a
    file came from."""
    for hold in holds:
        for part in run.archive_parts or []:
            if "file" in part and hold.covers_path(part["file"]):
                return hold
            if hold.model_label and part.get("model") == hold.model_label:
                return hold
            if hold.model_label and hold.model_label in (run.details or {}).get("targets", {}):
                return hold
    return None


@cleanup_task(
    "prune_archives",
    'Delete archives (archive before delete) older than {"older_than_days": n} (default: '
    "CLEANUP_ARCHIVE_DAYS; 0 there keeps them for ever), never one a legal hold covers.",
    validate=_validate,
)
def prune_archives(ctx: CleanupContext) -> str:
    days = ctx.params["older_than_days"]
    if not days:
        return "Archives are kept for ever (CLEANUP_ARCHIVE_DAYS is 0)."
    cutoff = timezone.now() - timedelta(days=days)
    runs = CleanupRun.objects.filter(finished_at__lt=cutoff).exclude(archive_parts=[])
    holds = list(CleanupHold.objects.active())
    due: list[tuple[CleanupRun, list[dict[str, Any]]]] = []
    kept: dict[str, int] = {}
    for run in runs.order_by("pk").iterator(chunk_size=200):
        hold = _hold_on(run, holds)
        if hold is not None:
            kept[hold.reason] = kept.get(hold.reason, 0) + len(run.archive_parts)
            continue
        due.append((run, list(run.archive_parts)))
    for reason, count in kept.items():
        ctx.kept_by_hold(reason, count)
    total = sum(len(parts) for _, parts in due)
    if ctx.dry_run:
        ctx.would_delete(TARGET, total)
        return f"Would delete {total} archive part(s).{ctx.kept_message()}"
    if ctx.guard is not None:
        sample = [[part["name"], f"{part.get('rows', 0)} rows"] for _, p in due for part in p]
        ctx.guard(TARGET, {TARGET: total}, {}, lambda: sample[:20])
    storage = archive_storage()
    for run, parts in due:
        if ctx.out_of_time():
            break
        left = ctx.left_to_delete(TARGET)
        if left is not None and left < len(parts):
            ctx.capped = True
            break
        for part in parts:
            storage.delete(part["name"])  # gone already: nothing to do
        with transaction.atomic():
            # The run keeps the parts' names and checksums as evidence, marked deleted.
            pruned = [{**part, "pruned_at": timezone.now().isoformat()} for part in parts]
            details = {**(run.details or {}), "archive_pruned": pruned}
            CleanupRun.objects.filter(pk=run.pk).update(archive_parts=[], details=details)
            ctx.deleted(TARGET, len(parts), bytes=sum(p.get("bytes", 0) for p in parts))
    return f"Deleted {ctx.items} archive part(s).{ctx.kept_message()}"
