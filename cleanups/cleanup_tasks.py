"""The built-in cleanup tasks. Discovered like any app's ``cleanup_tasks`` module."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import stat
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import models
from django.utils import timezone

from cleanups.conf import settings
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
    deletes=["sessions.Session"],
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
    lookups = _validate_filter(model, field_name, params.get("filter"))
    cleaned = {
        "model": model._meta.label,
        "field": field_name,
        "older_than_days": days,
        "filter": lookups,
    }
    return _with_batch_size(cleaned, params)


# A filter may only narrow the rows by the model's own plain columns with these lookups: no
# spans to other models, no regexes or substring scans (a dry run's count would answer any
# question about the data; a regex can hold the worker), never a secret.
FILTER_LOOKUPS = frozenset(
    {"exact", "iexact", "in", "isnull", "lt", "lte", "gt", "gte", "startswith", "istartswith"}
)
TEXT_LOOKUPS = frozenset({"iexact", "startswith", "istartswith"})
MAX_FILTER_KEYS, MAX_IN_VALUES = 20, 1000


def protected_field(model: type[models.Model], name: str) -> bool:
    """A field holding secrets: a password, or one CLEANUP_PROTECTED_FIELDS lists (as a bare
    name for every model, or as app_label.Model.field)."""
    listed = {entry.strip().lower() for entry in settings.CLEANUP_PROTECTED_FIELDS}
    return bool(
        name == "password"
        or name.lower() in listed
        or f"{model._meta.label_lower}.{name.lower()}" in listed
    )


def _validate_filter(model: type[models.Model], age_field: str, lookups: Any) -> Params:
    if lookups is None:
        return {}
    if not isinstance(lookups, dict):
        raise ValidationError('filter must be a JSON object of lookups, e.g. {"status": "done"}.')
    if len(lookups) > MAX_FILTER_KEYS:
        raise ValidationError(
            "filter may have at most %(max)d lookups.", params={"max": MAX_FILTER_KEYS}
        )
    for key, value in lookups.items():
        try:
            _check_lookup(model, age_field, key, value)
        except ValidationError as error:
            raise ValidationError(
                "filter %(key)s: %(error)s",
                params={"key": json.dumps(key)[:80], "error": " ".join(error.messages)},
            ) from None
    return lookups


def _check_lookup(model: type[models.Model], age_field: str, key: str, value: Any) -> None:
    name, _, lookup = key.partition("__")
    lookup = lookup or "exact"
    plain = [
        f.name
        for f in model._meta.concrete_fields
        if not f.is_relation and f.name != age_field and not protected_field(model, f.name)
    ]
    try:
        field = model._meta.get_field(name)
    except FieldDoesNotExist:
        field = None
    if field is not None and protected_field(model, field.name):
        raise ValidationError(
            "%(name)s holds secrets and cannot be filtered on.", params={"name": name}
        )
    if field is not None and field.name == age_field:
        raise ValidationError(
            "%(name)s is the age field, which the task compares itself.", params={"name": name}
        )
    if field is None or field.name not in plain:
        raise ValidationError(
            "%(name)s is not one of %(model)s's own plain fields (%(fields)s).",
            params={"name": name, "model": model._meta.label, "fields": ", ".join(plain)},
        )
    if lookup not in FILTER_LOOKUPS:
        raise ValidationError(
            "the lookup %(lookup)s is not allowed; use one of %(allowed)s (no spans to other "
            "models).",
            params={"lookup": lookup[:40], "allowed": ", ".join(sorted(FILTER_LOOKUPS))},
        )
    if lookup in TEXT_LOOKUPS and not isinstance(field, models.CharField | models.TextField):
        raise ValidationError("%(lookup)s works on text fields only.", params={"lookup": lookup})
    if lookup == "isnull":
        if not isinstance(value, bool):
            raise ValidationError("isnull takes true or false.")
        return
    if lookup == "in":
        if not isinstance(value, list) or not 0 < len(value) <= MAX_IN_VALUES:
            raise ValidationError(
                "in takes a list of 1 to %(max)d values.", params={"max": MAX_IN_VALUES}
            )
        for item in value:
            _check_value(field, item)
        return
    _check_value(field, value)


def _check_value(field: models.Field, value: Any) -> None:
    """A JSON scalar the field itself accepts (its type, and its database's range)."""
    if isinstance(field, models.BooleanField):
        kinds: tuple[type, ...] = (bool,)
        expected = "true or false"
    elif isinstance(field, models.IntegerField | models.FloatField):
        kinds, expected = (int, float), "a number"
    elif isinstance(field, models.DecimalField):
        kinds, expected = (int, float, str), "a number"
    else:  # text, and dates, times, UUIDs ... written as text in JSON
        kinds, expected = (str,), "a JSON string"
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValidationError(
            "%(field)s takes %(expected)s.", params={"field": field.name, "expected": expected}
        )
    try:
        field.run_validators(field.to_python(value))
    except ValidationError as error:
        raise ValidationError(
            "%(value)s is not a valid %(type)s: %(error)s",
            params={
                "value": json.dumps(value)[:40],
                "type": field.get_internal_type(),
                "error": " ".join(error.messages),
            },
        ) from None


@cleanup_task(
    "delete_old_rows",
    'Delete rows of a model whose date field is older than an age: {"model": "app.Model", '
    '"field": "created", "older_than_days": 30, "filter": {...}}; optional "batch_size" '
    "(default: batches sized to about 50 ms each).",
    validate=_validate_delete_old_rows,
    deletes_from_params=lambda params: [params["model"]],
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
    # Everything below works on directory descriptors, never on paths: a directory swapped for
    # a symlink during the walk cannot redirect a single stat, unlink or rmdir outside the root.
    root_fd = _open_directory_nofollow(root, params["directory"])
    try:
        files, bytes_freed, finished = _delete_files_under(ctx, root_fd, cutoff)
        if not finished:
            return f"Paused after {files} file(s); continuing."
        if params["remove_empty_dirs"] and params["recursive"] and not ctx.dry_run:
            removed = _remove_empty_dirs_under(root_fd)
            if removed:
                ctx.deleted("directories", removed)
    finally:
        os.close(root_fd)
    verb = "Would free" if ctx.dry_run else "Freed"
    return f"{verb} {bytes_freed} byte(s) in {files} file(s)."


# Files deleted between two reports: a worker killed mid-run leaves a record short by at most
# this many, while a report (one UPDATE) still costs little beside the unlinks it covers.
FILES_PER_BATCH = 20


def _open_directory_nofollow(real: Path, directory: str) -> int:
    """A descriptor of ``real`` (an absolute, resolved path), opened one component at a time,
    none of them through a symlink (one may have appeared since the path was resolved)."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in real.parts[1:]:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError as error:
        os.close(fd)
        raise ValidationError(
            "%(dir)s cannot be opened without following a symlink: %(error)s",
            params={"dir": directory, "error": error.strerror},
        ) from None
    return fd


def _delete_files_under(ctx: CleanupContext, root_fd: int, cutoff: float) -> tuple[int, int, bool]:
    """Delete (dry run: count) the matching regular files older than ``cutoff``, reporting
    after every batch. Returns files, bytes and whether the walk finished (not out of time)."""
    params = ctx.params
    files = bytes_freed = 0
    batch_files = batch_bytes = 0

    def report() -> None:
        nonlocal batch_files, batch_bytes
        if batch_files:
            ctx.deleted("files", batch_files, bytes=batch_bytes)
        batch_files = batch_bytes = 0

    # fwalk opens each subdirectory relative to its parent's descriptor and enters it only if
    # it is the very directory lstat saw: never a symlink, whenever the swap happens.
    walk = os.fwalk(".", topdown=True, follow_symlinks=False, dir_fd=root_fd)
    for _dirpath, dirnames, filenames, dir_fd in walk:
        if not params["recursive"]:
            dirnames.clear()
        for name in filenames:
            if not fnmatch.fnmatchcase(name, params["pattern"]):
                continue
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            # Only regular files: never a symlink (its target may be anywhere), fifo or device.
            if not stat.S_ISREG(info.st_mode) or info.st_mtime >= cutoff:
                continue
            if not ctx.dry_run:
                try:
                    os.unlink(name, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
            files += 1
            bytes_freed += info.st_size
            batch_files += 1
            batch_bytes += info.st_size
            if batch_files >= FILES_PER_BATCH:
                report()
            if ctx.out_of_time():
                report()
                walk.close()
                return files, bytes_freed, False
    report()
    return files, bytes_freed, True


def _remove_empty_dirs_under(root_fd: int) -> int:
    """Remove the empty directories below the root (never the root), deepest first."""
    removed = 0
    for _dirpath, dirnames, _filenames, dir_fd in os.fwalk(
        ".", topdown=False, follow_symlinks=False, dir_fd=root_fd
    ):
        for name in dirnames:
            try:
                # rmdir never follows a symlink (ENOTDIR) and leaves a full directory alone.
                os.rmdir(name, dir_fd=dir_fd)
            except OSError:
                continue
            removed += 1
    return removed


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
    deletes=["cleanups.CleanupRun"],
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
