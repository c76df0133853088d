"""Applying a plan: the definitions in one transaction, then the declared states through the
control functions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction

from cleanups import control
from cleanups.declared.planning import Change, Plan, make_plan
from cleanups.declared.reading import (
    DEFINITION_FIELDS,
    PAUSED,
    RUNNING,
    STOPPED,
    DeclarationError,
    collect,
)
from cleanups.models import CleanupSchedule


@dataclass
class Result:
    plan: Plan
    warnings: list[str] = field(default_factory=list)


def plan(*, adopt: bool = False, setting: object = None, modules: Any = None) -> Plan:
    declarations, problems = collect(setting, modules)
    return make_plan(declarations, problems, adopt=adopt)


def sync(*, adopt: bool = False, setting: object = None, modules: Any = None) -> Result:
    """Make the database (and through the control functions, the engine) agree with the code.
    Raises DeclarationError, with nothing applied, if any declaration is invalid."""
    declarations, problems = collect(setting, modules)
    for attempt in range(2):
        try:
            with transaction.atomic():
                the_plan = make_plan(declarations, problems, adopt=adopt)
                if the_plan.problems:
                    raise DeclarationError(the_plan.problems)
                _save_definitions(the_plan.changes)
            break
        except IntegrityError:
            # Another sync (a second worker starting with --sync) created one meanwhile: plan
            # again against what it wrote.
            if attempt:
                raise
    result = Result(the_plan)
    _apply_states(the_plan.changes, result)
    return result


def _save_definitions(changes: list[Change]) -> None:
    for change in changes:
        if change.form is None:
            continue
        schedule = change.form.save(commit=False)
        schedule.managed_by = change.source
        schedule.changed_by = None  # the code is its editor (CleanupSchedule.deletes_as)
        if change.kind == "create":
            schedule.save()
        else:
            # Only the definition: the row's state belongs to the worker and the operator.
            schedule.save(
                update_fields=[*DEFINITION_FIELDS, "managed_by", "changed_by", "updated_at"]
            )


def _apply_states(changes: list[Change], result: Result) -> None:
    """The declared states, through the control functions (bulk forms: one UPDATE each, the
    engine calls on their pool; the reconciler finishes whatever the engine did not take)."""
    pks = dict(
        CleanupSchedule.objects.filter(name__in=[c.name for c in changes]).values_list("name", "pk")
    )
    groups: dict[tuple[str, str], list[Change]] = {}
    for change in changes:
        if change.transition is not None:
            groups.setdefault(change.transition, []).append(change)
    for (now, wanted), members in groups.items():
        selected = CleanupSchedule.objects.filter(pk__in=[pks[c.name] for c in members])
        if wanted == RUNNING:
            outcome = control.start_schedules(selected)
            if outcome.refused:
                for schedule in selected.filter(desired_state=STOPPED):
                    result.warnings.append(f"{schedule.name}: cannot run: {schedule.status_reason}")
        elif wanted == PAUSED and now == STOPPED:
            # Started and paused in one transaction: the engine never sees it running (the
            # start's engine calls skip a schedule that is not running when they come).
            with transaction.atomic():
                control.start_schedules(selected)
                control.pause_schedules(selected)
        elif wanted == PAUSED:
            control.pause_schedules(selected)
        else:
            control.terminate_schedules(selected)
    for change in changes:
        if change.declared_state is None:
            continue
        row = CleanupSchedule.objects.filter(pk=pks[change.name])
        if change.kind == "release":
            row.update(
                managed_by="",
                declared_state="",
                status_reason=f"Stopped: no longer declared in {change.source}; managed in "
                "the admin from now on (saving it there makes you its editor).",
            )
            continue
        fields: dict[str, Any] = {"declared_state": change.declared_state}
        if change.transition is not None and change.declared_state != RUNNING:
            fields["status_reason"] = (
                f"{change.declared_state.capitalize()}: declared {change.declared_state} in "
                f"{change.source}."
            )
        row.update(**fields)
