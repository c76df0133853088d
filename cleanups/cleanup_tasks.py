"""The built-in cleanup tasks. Discovered like any app's ``cleanup_tasks`` module."""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import FieldDoesNotExist, FieldError, ValidationError
from django.db import models
from django.utils import timezone

from cleanups.registry import (
    CleanupContext,
    Params,
    bool_param,
    cleanup_task,
    delete_in_batches,
    int_param,
    number_param,
    positive_days,
    reject_unknown,
)

logger = logging.getLogger(__name__)

MAX_BATCH_SIZE = 100_000


def _with_batch_size(cleaned: Params, params: Params) -> Params:
    """Add a given batch_size (rows per batch). Without one, batches size themselves to take
    about 50 ms each, which keeps locks short and per-batch overhead negligible."""
    if params.get("batch_size") is not None:
        cleaned["batch_size"] = int_param(params, "batch_size", 0, 1, MAX_BATCH_SIZE)
    return cleaned


def _age_cutoff(days: float) -> Any:
    return timezone.now() - timedelta(days=days)


# expired_sessions ---------------------------------------------------------------------------


def _validate_expired_sessions(params: Params) -> Params:
    reject_unknown(params, {"batch_size"})
    return _with_batch_size({}, params)


@cleanup_task(
    "expired_sessions",
    "Delete Django sessions whose expiry date has passed, in database-side batches "
    '(optional "batch_size"; default: sized to about 50 ms each).',
    validate=_validate_expired_sessions,
)
def expired_sessions(ctx: CleanupContext) -> str:
    from django.contrib.sessions.models import Session

    expired = Session.objects.filter(expire_date__lt=timezone.now())
    delete_in_batches(ctx, expired, ctx.params.get("batch_size"))
    verb = "Would delete" if ctx.dry_run else "Deleted"
    return f"{verb} {ctx.items} expired session(s)."


# delete_old_rows ----------------------------------------------------------------------------


def _resolve_model(label: Any) -> type[models.Model]:
    if not isinstance(label, str) or label.count(".") != 1:
        raise ValidationError('model must be "app_label.ModelName", e.g. "sessions.Session".')
    try:
        return apps.get_model(label)
    except LookupError:
        raise ValidationError(
            "model %(label)s is not an installed model.", params={"label": label}
        ) from None


def _validate_delete_old_rows(params: Params) -> Params:
    reject_unknown(params, {"model", "field", "older_than_days", "filter", "batch_size"})
    if "model" not in params:
        raise ValidationError('model is required, e.g. "sessions.Session".')
    model = _resolve_model(params["model"])
    field_name = params.get("field")
    if not isinstance(field_name, str) or not field_name:
        raise ValidationError("field is required: the date or datetime field to compare.")
    try:
        field = model._meta.get_field(field_name)
    except FieldDoesNotExist:
        raise ValidationError(
            "%(model)s has no field %(field)s.",
            params={"model": params["model"], "field": field_name},
        ) from None
    if not isinstance(field, models.DateField):  # DateTimeField is a DateField
        raise ValidationError(
            "%(field)s is not a date or datetime field.", params={"field": field_name}
        )
    if "older_than_days" not in params:
        raise ValidationError("older_than_days is required (may be fractional, e.g. 0.5).")
    days = positive_days(params, "older_than_days", None)
    lookups = params.get("filter")
    if lookups is None:
        lookups = {}
    if not isinstance(lookups, dict):
        raise ValidationError('filter must be a JSON object of lookups, e.g. {"status": "done"}.')
    try:
        str(model._base_manager.filter(**lookups).query)
    except (FieldError, ValueError, TypeError, ValidationError) as error:
        raise ValidationError(
            "filter is not valid for %(model)s: %(error)s",
            params={
                "model": params["model"],
                "error": error,
            },
        ) from None
    cleaned = {
        "model": model._meta.label,
        "field": field_name,
        "older_than_days": days,
        "filter": lookups,
    }
    return _with_batch_size(cleaned, params)


@cleanup_task(
    "delete_old_rows",
    'Delete rows of a model whose date field is older than an age: {"model": "app.Model", '
    '"field": "created", "older_than_days": 30, "filter": {...}}; optional "batch_size" '
    "(default: batches sized to about 50 ms each).",
    validate=_validate_delete_old_rows,
)
def delete_old_rows(ctx: CleanupContext) -> str:
    params = ctx.params
    model = apps.get_model(params["model"])
    field = model._meta.get_field(params["field"])
    cutoff = _age_cutoff(params["older_than_days"])
    if not isinstance(field, models.DateTimeField):
        cutoff = cutoff.date()
    rows = model._base_manager.filter(**params["filter"], **{f"{params['field']}__lt": cutoff})
    delete_in_batches(ctx, rows, params.get("batch_size"))
    verb = "Would delete" if ctx.dry_run else "Deleted"
    return f"{verb} {ctx.items} row(s) older than {params['older_than_days']:g} day(s)."


# delete_old_files ---------------------------------------------------------------------------


def allowed_dirs() -> list[Path]:
    return [Path(d).resolve() for d in settings.CLEANUP_ALLOWED_DIRS if d]


def _inside_allowed(directory: Any) -> Path:
    """The real directory (symlinks and .. resolved), if it lies in CLEANUP_ALLOWED_DIRS."""
    if not isinstance(directory, str) or not directory:
        raise ValidationError("directory is required.")
    roots = allowed_dirs()
    if not roots:
        raise ValidationError(
            "No directory may be cleaned: set CLEANUP_ALLOWED_DIRS to the directories allowed."
        )
    real = Path(directory).resolve()
    if not any(real == root or root in real.parents for root in roots):
        raise ValidationError(
            "%(dir)s is outside the allowed directories (%(allowed)s).",
            params={"dir": directory, "allowed": ", ".join(str(r) for r in roots)},
        )
    return real


def _validate_delete_old_files(params: Params) -> Params:
    reject_unknown(
        params, {"directory", "pattern", "older_than_days", "recursive", "remove_empty_dirs"}
    )
    real = _inside_allowed(params.get("directory"))
    if not real.is_dir():
        raise ValidationError("%(dir)s is not a directory.", params={"dir": params["directory"]})
    pattern = params.get("pattern", "*")
    if not isinstance(pattern, str) or not pattern or "/" in pattern:
        raise ValidationError('pattern must be a file-name glob such as "*.log" (no "/").')
    if "older_than_days" not in params:
        raise ValidationError("older_than_days is required.")
    return {
        "directory": params["directory"],
        "pattern": pattern,
        "older_than_days": positive_days(params, "older_than_days", None),
        "recursive": bool_param(params, "recursive", False),
        "remove_empty_dirs": bool_param(params, "remove_empty_dirs", False),
    }


@cleanup_task(
    "delete_old_files",
    'Delete files under an allowed directory matching a glob, older than an age: {"directory": '
    '"/var/log/app", "pattern": "*.log", "older_than_days": 7, "recursive": false, '
    '"remove_empty_dirs": false}.',
    validate=_validate_delete_old_files,
)
def delete_old_files(ctx: CleanupContext) -> str:
    params = ctx.params
    root = _inside_allowed(params["directory"])  # checked again: the tree may have changed
    cutoff = time.time() - params["older_than_days"] * 86400
    files = bytes_freed = 0
    pending_files = pending_bytes = 0

    def report() -> None:
        nonlocal pending_files, pending_bytes
        if pending_files:
            ctx.deleted("files", pending_files, bytes=pending_bytes)
        pending_files = pending_bytes = 0

    for dirpath, dirnames, filenames in os.walk(root, topdown=True, followlinks=False):
        if not params["recursive"]:
            dirnames.clear()
        here = Path(dirpath)
        for name in filenames:
            if not fnmatch.fnmatchcase(name, params["pattern"]):
                continue
            path = here / name
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            # Never a symlink (its target may be anywhere) nor anything that is not a file.
            if not path.is_file() or path.is_symlink() or info.st_mtime >= cutoff:
                continue
            if not ctx.dry_run:
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
            files += 1
            bytes_freed += info.st_size
            pending_files += 1
            pending_bytes += info.st_size
            if pending_files >= 100:
                report()
            if ctx.out_of_time():
                report()
                return f"Paused after {files} file(s); continuing."
    report()
    if params["remove_empty_dirs"] and params["recursive"] and not ctx.dry_run:
        removed = 0
        for dirpath, _dirnames, _filenames in os.walk(root, topdown=False, followlinks=False):
            path = Path(dirpath)
            if path != root and not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()
                removed += 1
        if removed:
            ctx.deleted("directories", removed)
    verb = "Would free" if ctx.dry_run else "Freed"
    return f"{verb} {bytes_freed} byte(s) in {files} file(s)."


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
    return _with_batch_size(cleaned, params)


@cleanup_task(
    "prune_run_history",
    'Prune our own run records: {"keep_last": 100, "keep_failed_last": 1000, '
    '"older_than_days": 30} per schedule; never a run still running.',
    validate=_validate_prune_run_history,
)
def prune_run_history(ctx: CleanupContext) -> str:
    from cleanups.models import CleanupRun, CleanupSchedule

    params = ctx.params
    for schedule_id in CleanupSchedule.objects.values_list("pk", flat=True):
        if ctx.out_of_time():
            break
        runs = CleanupRun.objects.filter(schedule_id=schedule_id).exclude(
            status=CleanupRun.Status.RUNNING
        )
        keep_from = _nth_newest_iteration(runs, params["keep_last"])
        keep_failed_from = _nth_newest_iteration(
            runs.filter(status=CleanupRun.Status.FAILED), params["keep_failed_last"]
        )
        candidates = runs.filter(iteration__lt=keep_from).exclude(
            status=CleanupRun.Status.FAILED, iteration__gte=keep_failed_from
        )
        if params["older_than_days"] is not None:
            candidates = candidates.filter(started_at__lt=_age_cutoff(params["older_than_days"]))
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
    from durabletask.client import OrchestrationQuery, OrchestrationStatus

    from cleanups.durable.connection import get_client

    finished = [
        OrchestrationStatus.COMPLETED,
        OrchestrationStatus.FAILED,
        OrchestrationStatus.TERMINATED,
    ]
    created_before = _age_cutoff(ctx.params["older_than_days"])
    client = get_client(call_timeout=settings.PURGE_CALL_TIMEOUT)
    if ctx.dry_run:
        states = client.get_all_orchestration_states(
            OrchestrationQuery(created_time_to=created_before, runtime_status=finished)
        )
        ctx.would_delete("orchestrations", len(states))
        return f"Would purge {len(states)} orchestration(s)."
    result = client.purge_orchestrations_by(created_time_to=created_before, runtime_status=finished)
    ctx.deleted("orchestrations", result.deleted_instance_count)
    return f"Purged {result.deleted_instance_count} orchestration(s)."


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
