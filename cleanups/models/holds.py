"""Legal holds: rows (a model, optionally narrowed by a filter) or a directory that no deleting
path may touch while the hold lasts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from cleanups.log import has_control_characters
from cleanups.tasks.filters import validate_filter
from cleanups.tasks.holds import within


class HoldQuerySet(models.QuerySet["CleanupHold"]):
    def active(self) -> HoldQuerySet:
        """Holds in force now: no end date, or one still to come."""
        return self.filter(Q(ends_at__isnull=True) | Q(ends_at__gt=timezone.now()))


class CleanupHold(models.Model):
    """A legal hold: while it lasts, cleanups deletes none of the rows or files it covers."""

    model_label = models.CharField(
        "model",
        max_length=200,
        blank=True,
        help_text='The rows held: a model as "app_label.ModelName" (blank for a directory hold).',
    )
    filter = models.JSONField(
        default=dict,
        blank=True,
        help_text='Narrows a model hold to the rows these lookups match, e.g. {"customer_id": 7} '
        "(the same lookups as a schedule's filter). Empty: every row of the model.",
    )
    directory = models.CharField(
        max_length=500,
        blank=True,
        help_text="The files held: every file in this directory and below (blank for a model hold).",
    )
    reason = models.CharField(
        max_length=200, help_text="Why, as runs report it: \"N rows kept by hold 'reason'\"."
    )
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )
    created_at = models.DateTimeField(auto_now_add=True)
    ends_at = models.DateTimeField(
        null=True, blank=True, help_text="The hold ends at this time. Blank: until it is deleted."
    )

    objects = HoldQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = "legal hold"

    def __str__(self) -> str:
        return self.reason

    @property
    def target(self) -> str:
        return self.model_label or self.directory

    def held_model(self) -> type[models.Model] | None:
        try:
            return apps.get_model(self.model_label) if self.model_label else None
        except (LookupError, ValueError):
            return None

    def rows(self) -> Q:
        """The rows it holds, as a filter of its model."""
        return Q(**(self.filter or {}))

    def covers_path(self, path: str | Path) -> bool:
        return bool(self.directory) and within(path, Path(self.directory).resolve())

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        if has_control_characters(self.reason or ""):
            errors["reason"] = ["The reason cannot contain control characters."]
        if bool(self.model_label) == bool(self.directory):
            errors["__all__"] = ["A hold names either a model or a directory, not both."]
        elif self.model_label:
            model = self.held_model()
            if model is None:
                errors["model_label"] = [
                    f'{self.model_label!r} is not an installed model ("app_label.ModelName").'
                ]
            else:
                self.model_label = model._meta.label
                try:
                    self.filter = validate_filter(model, None, self.filter)
                except ValidationError as error:
                    errors["filter"] = error.messages
        else:
            if self.filter:
                errors["filter"] = ["A directory hold has no filter."]
            if not Path(self.directory).is_absolute():
                errors["directory"] = ["Give an absolute path, e.g. /var/log/app."]
        if errors:
            raise ValidationError(errors)

    def refusal_for(self, user: Any) -> str | None:
        """Why ``user`` may not keep this hold as it is (a hold's count is an answer about the
        rows, so its filter may ask only what its author may read); None when they may."""
        model = self.held_model()
        if model is None:
            return None
        opts = model._meta
        if not user.has_perm(f"{opts.app_label}.view_{opts.model_name}"):
            return f"You may not view {opts.label}, so you may not hold its rows by a filter."
        return None


class DatabaseHolds:
    """The holds in force, as the deleters ask for them (installed by the app when ready)."""

    def row_holds(self, model: type[models.Model]) -> list[tuple[str, Q]]:
        label = model._meta.label
        held = CleanupHold.objects.active().filter(model_label=label)
        return [(hold.reason, hold.rows()) for hold in held.order_by("pk")]

    def directory_holds(self) -> list[tuple[str, Path]]:
        held = CleanupHold.objects.active().exclude(directory="")
        return [(hold.reason, Path(hold.directory).resolve()) for hold in held.order_by("pk")]
