"""The built-in tasks that delete rows: expired sessions, and old rows of a model an editor
names (with a filter that may only narrow them by the model's own plain columns)."""

from __future__ import annotations

import json
from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import models
from django.utils import timezone

from cleanups.cleanup_tasks.common import age_cutoff, with_batch_size
from cleanups.conf import settings
from cleanups.registry import (
    CleanupContext,
    Params,
    cleanup_task,
    delete_in_batches,
    positive_days,
    reject_unknown,
)

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
    return with_batch_size(cleaned, params)


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
    cutoff = age_cutoff(params["older_than_days"])
    if not isinstance(field, models.DateTimeField):
        cutoff = cutoff.date()
    rows = model._base_manager.filter(**params["filter"], **{f"{params['field']}__lt": cutoff})
    delete_in_batches(ctx, rows, params.get("batch_size"))
    verb = "Would delete" if ctx.dry_run else "Deleted"
    return f"{verb} {ctx.items} row(s) older than {params['older_than_days']:g} day(s)."
