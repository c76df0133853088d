"""Filters for the run-history pages."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any

from django import forms
from django.db.models import QuerySet
from django.utils import timezone

from cleanups.models import CleanupRun


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


class CleanupScheduleForm(forms.ModelForm):
    """The admin's schedule form (its model and fields come from the ModelAdmin)."""

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.has_error("task"):
            # The params are checked against the chosen task; with no valid task chosen, that
            # check would run against the previous or default one and mislead. Say only that.
            cleaned.pop("params", None)
        return cleaned
