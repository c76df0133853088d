"""The filters an editor may write (a schedule's ``filter``, a hold's): lookups on a model's own
plain columns, never a secret. One validation for both, so a hold can ask nothing a schedule
could not."""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import models

from cleanups.conf import settings

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


def validate_filter(
    model: type[models.Model], age_field: str | None, lookups: Any
) -> dict[str, Any]:
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


def _check_lookup(model: type[models.Model], age_field: str | None, key: str, value: Any) -> None:
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
