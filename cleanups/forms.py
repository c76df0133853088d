"""The forms: the run-history filters, and the admin's schedule form with its fields."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.forms.fields import InvalidJSONInput
from django.utils import timezone

from cleanups.models import CleanupRun
from cleanups.webhooks import webhook_problem

# A schedule has at most this many webhooks of its own.
MAX_WEBHOOKS = 5


class RunFilterForm(forms.Form):
    status = forms.ChoiceField(
        choices=[("", "Any status"), *CleanupRun.Status.choices], required=False
    )
    trigger = forms.ChoiceField(
        choices=[("", "Any trigger"), *CleanupRun.Trigger.choices], required=False
    )
    since = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        # A day whose bound in the current time zone is no datetime in UTC (the end of
        # 9999-12-31; 0001-01-01 east of UTC) is an error of its field, not an OverflowError
        # in the query. The bounds are the filter's: since from its day, until to the next.
        for name, days_after in (("since", 0), ("until", 1)):
            day = cleaned.get(name)
            try:
                if day is not None:
                    (_start_of(day) + timedelta(days=days_after)).astimezone(UTC)
            except OverflowError:
                self.add_error(name, f"{name}={day.isoformat()} is out of range.")
        if cleaned.get("since") and cleaned.get("until") and cleaned["until"] < cleaned["since"]:
            self.add_error("until", "The end date is before the start date.")
        return cleaned

    def filter(self, runs: QuerySet[CleanupRun]) -> QuerySet[CleanupRun]:
        """The runs the valid filters select (invalid ones are ignored and shown as errors)."""
        data = self.cleaned_data if self.is_valid() else {}
        if data.get("status"):
            runs = runs.filter(status=data["status"])
        if data.get("trigger"):
            runs = runs.filter(trigger=data["trigger"])
        if data.get("since"):
            runs = runs.filter(started_at__gte=_start_of(data["since"]))
        if data.get("until"):
            runs = runs.filter(started_at__lt=_start_of(data["until"]) + timedelta(days=1))
        return runs


def _start_of(day: Any) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


class ParamsField(forms.JSONField):
    """The params' JSON text. Text nested too deep, or with a number too long, for Python's
    parser to read is a field error like any other malformed JSON, not a 500."""

    def to_python(self, value: Any) -> Any:
        try:
            return super().to_python(value)
        except RecursionError as error:
            raise ValidationError(
                "The parameters are nested too deeply to read.", code="invalid"
            ) from error
        except ValueError as error:  # malformed JSON is a ValidationError already; not this
            raise ValidationError(
                "A number in the parameters has too many digits to read "
                f"(at most {sys.get_int_max_str_digits()}).",
                code="invalid",
            ) from error

    def bound_data(self, data: Any, initial: Any) -> Any:
        try:
            return super().bound_data(data, initial)
        except (RecursionError, ValueError):
            return InvalidJSONInput(data)


class WebhookURLsField(forms.Field):
    """A schedule's webhook URLs: one per line in the admin (a list in a declaration in code)."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 80})

    def __init__(self, *, encoder: Any = None, decoder: Any = None, **kwargs: Any) -> None:
        # The model's JSONField offers its encoder and decoder: a list of lines needs neither.
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return "\n".join(str(v) for v in value)
        return value

    def to_python(self, value: Any) -> list[str]:
        if value in (None, ""):
            return []
        if isinstance(value, str):
            lines = value.splitlines()
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            lines = list(value)
        else:
            raise ValidationError("Give webhook URLs one per line.", code="invalid")
        urls: list[str] = []
        for line in lines:
            if line.strip() and line.strip() not in urls:
                urls.append(line.strip())
        return urls

    def validate(self, value: list[str]) -> None:
        super().validate(value)
        if len(value) > MAX_WEBHOOKS:
            raise ValidationError(
                f"At most {MAX_WEBHOOKS} webhooks per schedule (the site's ALERT_WEBHOOKS get "
                "every alert as well).",
                code="max_webhooks",
            )
        errors = []
        for url in value:
            problem = webhook_problem(url)
            if problem:
                shown = url if len(url) <= 80 else url[:79] + "…"
                errors.append(ValidationError(f"{shown}: {problem}.", code="webhook"))
        if errors:
            raise ValidationError(errors)


class SiteDefaultSelect(forms.NullBooleanSelect):
    """Yes / No / the site's default, for a BooleanField(null=True) whose blank means that."""

    def __init__(self, default_label: str) -> None:
        super().__init__()
        self.choices = [("unknown", default_label), ("true", "Yes"), ("false", "No")]


class CleanupScheduleForm(forms.ModelForm):
    """The admin's schedule form (its model and fields come from the ModelAdmin)."""

    class Meta:
        # Inherited by the form the ModelAdmin builds.
        field_classes = {"params": ParamsField, "alert_webhooks": WebhookURLsField}
        widgets = {"archive": SiteDefaultSelect("The site's default (CLEANUP_ARCHIVE_BY_DEFAULT)")}

    # The person saving, set by the admin for each request. The schedule is validated, saved and
    # later run as theirs: it may delete only what they may delete.
    editor: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.editor is not None:
            self.instance.changed_by = self.editor

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.has_error("task"):
            # The params are checked against the chosen task; with no valid task chosen, that
            # check would run against the previous or default one and mislead. Say only that.
            cleaned.pop("params", None)
        return cleaned
