"""The schedules' queries, and what marks a schedule changed for the reconciler."""

from __future__ import annotations

from functools import cache
from typing import Any

from django.db import models
from django.db.models import OuterRef, Subquery
from django.utils.timezone import now as utc_now


@cache
def changes(model: type[models.Model]) -> frozenset[str]:
    """What the engine runs from: changed, the schedule's orchestration may need starting,
    pausing, resuming or ending. (The plan of the next run changes every run: not among them.)"""
    editable = {field.name for field in model._meta.concrete_fields if field.editable}
    return frozenset({"desired_state", "generation"} | (editable - {"name"}))


class ScheduleQuerySet(models.QuerySet[Any]):
    def update(self, **fields: Any) -> int:
        """An update of what the engine should agree with (the desired state, the generation,
        the definition) marks the rows changed: the reconciler's next pass looks at them."""
        if "changed_at" not in fields and changes(self.model).intersection(fields):
            fields["changed_at"] = utc_now()
        return super().update(**fields)

    def should_run(self) -> ScheduleQuerySet:
        return self.filter(desired_state=self.model.DesiredState.RUNNING)

    def alive(self) -> ScheduleQuerySet:
        """Schedules whose orchestration should exist: running or paused."""
        return self.exclude(desired_state=self.model.DesiredState.STOPPED)

    def with_last_run(self) -> ScheduleQuerySet:
        """Annotate the newest run's status and start time (two subqueries, not a query per row)."""
        runs = self.model._meta.get_field("runs").related_model._default_manager
        newest = runs.filter(schedule=OuterRef("pk")).order_by("-iteration")
        return self.annotate(
            last_run_status=Subquery(newest.values("status")[:1]),
            last_run_started_at=Subquery(newest.values("started_at")[:1]),
        )
