"""The built-in tasks that delete rows: expired sessions, and old rows of a model an editor
names (with a filter that may only narrow them by the model's own plain columns)."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import models
from django.utils import timezone

from cleanups.cleanup_tasks.common import age_cutoff, capped, with_batch_size
from cleanups.registry import (
    CleanupContext,
    Params,
    cleanup_task,
    delete_in_batches,
    measure_backlog,
    positive_days,
    reject_unknown,
)
from cleanups.tasks.filters import FILTER_LOOKUPS, TEXT_LOOKUPS, protected_field, validate_filter

__all__ = ["FILTER_LOOKUPS", "TEXT_LOOKUPS", "protected_field"]

# expired_sessions ---------------------------------------------------------------------------


def _validate_expired_sessions(params: Params) -> Params:
    reject_unknown(params, {"batch_size"})
    return with_batch_size({}, params)


@cleanup_task(
    "expired_sessions",
    "Delete Django sessions whose expiry date has passed, in database-side batches "
    '(optional "batch_size"; default: sized to about 50 ms each).',
    validate=_validate_expired_sessions,
    deletes=["sessions.Session"],
)
def expired_sessions(ctx: CleanupContext) -> str:
    from django.contrib.sessions.models import Session

    now = timezone.now()
    expired = Session.objects.filter(expire_date__lt=now)
    delete_in_batches(ctx, expired, ctx.params.get("batch_size"), oldest_first="expire_date")
    measure_backlog(ctx, expired, "expire_date", now)
    verb = "Would delete" if ctx.dry_run else "Deleted"
    return f"{verb} {ctx.items} expired session(s){capped(ctx)}.{ctx.kept_message()}"


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
    lookups = validate_filter(model, field_name, params.get("filter"))
    cleaned = {
        "model": model._meta.label,
        "field": field_name,
        "older_than_days": days,
        "filter": lookups,
    }
    return with_batch_size(cleaned, params)


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
    cutoff = age_cutoff(params["older_than_days"])
    if not isinstance(field, models.DateTimeField):
        cutoff = cutoff.date()
    rows = model._base_manager.filter(**params["filter"], **{f"{params['field']}__lt": cutoff})
    delete_in_batches(ctx, rows, params.get("batch_size"), oldest_first=params["field"])
    if not ctx.unfinished:
        measure_backlog(ctx, rows, params["field"], cutoff)
    verb = "Would delete" if ctx.dry_run else "Deleted"
    days = f"{params['older_than_days']:g}"
    return f"{verb} {ctx.items} row(s) older than {days} day(s){capped(ctx)}.{ctx.kept_message()}"
