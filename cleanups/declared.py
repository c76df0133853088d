"""Schedules declared in code: ``settings.CLEANUP_SCHEDULES`` and every installed app's
``cleanup_schedules`` module (its ``SCHEDULES`` dict), both ``{name: {field: value, ...}}`` with
the admin form's fields plus ``state``.

``python manage.py syncschedules`` (and ``runworker --sync``) makes the database agree:

- Each declaration goes through the admin's own form, validated as code (a superuser's rights,
  within CLEANUP_ALLOWED_DIRS, _MODELS and _PROTECTED_FIELDS), so its errors are the admin's. One
  bad declaration and nothing at all is applied.
- A new name is created; a declared schedule whose fields differ is updated the way an admin
  save updates it (a running one takes the change from its next iteration; no restart).
- A field a declaration leaves out has the model's default: the declaration is the whole
  definition.
- ``state`` (running, the default; paused; stopped) is applied when the schedule is created,
  adopted, or when the declared state differs from the one the previous sync recorded. So an
  operator's pause, resume, start or terminate in the admin outlives later syncs until the code
  declares a different state.
- A schedule no longer declared is stopped (its orchestration terminated), never deleted: its
  runs stay, and it goes back to the admin (``managed_by`` blank).
- A name that an admin-made schedule already has is an error, unless ``adopt``: then code takes
  it over (its definition replaced by the declaration's).

States are applied through the control functions (``cleanups.control``), which write the
desired state the worker's reconciler enforces and ask the engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import import_module
from typing import Any

from django.apps import apps
from django.db import IntegrityError, transaction
from django.forms import modelform_factory
from django.utils.module_loading import module_has_submodule

from cleanups import control
from cleanups.conf import settings
from cleanups.forms import CleanupScheduleForm
from cleanups.models import CleanupSchedule

SETTING = "CLEANUP_SCHEDULES"
SETTING_SOURCE = f"settings.{SETTING}"
MODULE_NAME = "cleanup_schedules"
MODULE_ATTRIBUTE = "SCHEDULES"

RUNNING = CleanupSchedule.DesiredState.RUNNING
PAUSED = CleanupSchedule.DesiredState.PAUSED
STOPPED = CleanupSchedule.DesiredState.STOPPED
STATES = (RUNNING.value, PAUSED.value, STOPPED.value)

# What an operator fills in on the admin's form: the schedule's definition. Everything else on
# the row is state, written by control actions and runs.
DEFINITION_FIELDS: list[str] = [
    f.name
    for f in CleanupSchedule._meta.concrete_fields
    if f.editable and not f.primary_key and not f.is_relation
]
# A declaration's keys: the definition (its name is the dict's key) and the state it asks for.
DECLARATION_KEYS = frozenset(DEFINITION_FIELDS) - {"name"} | {"state"}
# Fields whose model default a declaration does not get: leaving them out is the form's error.
REQUIRED = ("task",)

DeclarationForm = modelform_factory(
    CleanupSchedule, form=CleanupScheduleForm, fields=DEFINITION_FIELDS
)


class DeclarationError(Exception):
    """The declarations cannot be applied: one readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Declaration:
    name: str
    source: str  # what managed_by records: settings.CLEANUP_SCHEDULES, or myapp.cleanup_schedules
    where: str  # how messages name it: CLEANUP_SCHEDULES['nightly']
    fields: Mapping[str, Any]
    state: str
    # What is wrong with it that the form does not check (unknown keys, its state).
    problems: tuple[str, ...] = ()


def _where(container: str, name: object) -> str:
    return f"{container}[{name!r}]"


def _read(container: str, source: str, declared: object, problems: list[str]) -> list[Declaration]:
    """The declarations of one source (each with what is wrong with it); a line in
    ``problems`` for what is not one at all."""
    if not isinstance(declared, Mapping):
        problems.append(
            f"{container}: must be a dict of schedule name -> fields, not "
            f"{type(declared).__name__}."
        )
        return []
    found = []
    for name, fields in declared.items():
        where = _where(container, name)
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where}: a schedule's name must be a non-empty string.")
            continue
        if not isinstance(fields, Mapping):
            problems.append(f"{where}: must be a dict of fields, not {type(fields).__name__}.")
            continue
        wrong = []
        for key in fields:
            if key not in DECLARATION_KEYS:
                hint = (
                    "a schedule's name is its key in the dict"
                    if key == "name"
                    else "the fields are " + ", ".join(sorted(DECLARATION_KEYS))
                )
                wrong.append(f"{where}: unknown field {key!r} ({hint}).")
        state = fields.get("state", RUNNING.value)
        if state not in STATES:
            wrong.append(f"{where}: state: {state!r} is not one of {', '.join(STATES)}.")
            state = RUNNING.value  # its other fields are still checked
        known = {k: v for k, v in fields.items() if k in DECLARATION_KEYS and k != "state"}
        found.append(Declaration(name, source, where, known, str(state), tuple(wrong)))
    return found


def declaration_modules() -> list[tuple[str, Any]]:
    """Every installed app's ``cleanup_schedules`` module (found as ``cleanup_tasks`` modules
    are), by its dotted path, imported."""
    modules = []
    for app_config in apps.get_app_configs():
        if module_has_submodule(app_config.module, MODULE_NAME):
            path = f"{app_config.name}.{MODULE_NAME}"
            modules.append((path, path))
    return modules


def collect(
    setting: object = None, modules: Iterable[tuple[str, Any]] | None = None
) -> tuple[list[Declaration], list[str]]:
    """Every declaration (the setting's, then each module's) and the problems found reading
    them. ``setting``: default settings.CLEANUP_SCHEDULES; ``modules``: (dotted path, module or
    its dotted path to import) pairs, default every installed app's cleanup_schedules."""
    problems: list[str] = []
    declared = _read(
        SETTING,
        SETTING_SOURCE,
        settings.CLEANUP_SCHEDULES if setting is None else setting,
        problems,
    )
    for path, module in declaration_modules() if modules is None else modules:
        if isinstance(module, str):
            try:
                module = import_module(module)
            except Exception as error:  # one line, not a traceback
                problems.append(f"{path}: cannot be imported: {type(error).__name__}: {error}")
                continue
        if not hasattr(module, MODULE_ATTRIBUTE):
            problems.append(f"{path}: defines no {MODULE_ATTRIBUTE} dict.")
            continue
        declared += _read(f"{path}.{MODULE_ATTRIBUTE}", path, module.SCHEDULES, problems)
    first: dict[str, Declaration] = {}
    unique = []
    for declaration in declared:
        if declaration.name in first:
            problems.append(
                f"{declaration.where}: the name {declaration.name!r} is declared twice "
                f"(also {first[declaration.name].where})."
            )
            continue
        first[declaration.name] = declaration
        unique.append(declaration)
    return unique, problems


# --- the difference -------------------------------------------------------------------------


@dataclass
class Change:
    """What a sync does to one schedule."""

    name: str
    kind: str  # create, update, adopt or release
    source: str
    fields: list[tuple[str, Any, Any]] = field(default_factory=list)  # (name, old, new)
    declared: dict[str, Any] = field(default_factory=dict)  # create: the declared values
    previous_source: str = ""
    # A state to apply: (the schedule's desired state now, the declared one); or None.
    transition: tuple[str, str] | None = None
    # The declared state to record on the row ("": none, for a release).
    declared_state: str | None = None
    runs: int = 0
    form: Any = None

    def lines(self) -> list[str]:
        name = self.name
        lines = []
        if self.kind == "create":
            described = [f"{k} {_show(k, v)}" for k, v in self.declared.items()]
            described.append(f"state {self.declared_state}")
            lines.append(f"create {name} [{self.source}]: {', '.join(described)}")
            return lines
        if self.kind == "adopt":
            lines.append(
                f"adopt {name}: managed by {self.source} from now on (was managed in the admin)"
            )
        elif self.kind == "release":
            if self.transition:
                verb, what = "stop", f"{self.transition[0]} -> stopped, orchestration terminated"
            else:
                verb, what = "release", "already stopped"
            lines.append(
                f"{verb} {name}: no longer declared in code (was {self.source}); {what}; its "
                f"{self.runs} run{'' if self.runs == 1 else 's'} kept; managed in the admin "
                "from now on"
            )
            return lines
        if self.previous_source and self.previous_source != self.source:
            lines.append(f"update {name}: managed by {self.previous_source} -> {self.source}")
        for field_name, old, new in self.fields:
            lines.append(
                f"update {name}: {field_name} {_show(field_name, old)} -> {_show(field_name, new)}"
            )
        if self.transition is not None:
            now, wanted = self.transition
            verb = "resume" if (now, wanted) == (PAUSED, RUNNING) else _VERBS[wanted]
            lines.append(f"{verb} {name}: state {now} -> {wanted} (declared {wanted})")
        elif self.declared_state is not None:
            lines.append(
                f"update {name}: declared state -> {self.declared_state} (already "
                f"{self.declared_state}; nothing to do in the engine)"
            )
        return lines


_VERBS = {RUNNING.value: "start", PAUSED.value: "pause", STOPPED.value: "stop"}


def _show(field_name: str, value: Any) -> str:
    if value is None or value == "":
        return "(blank)"
    if field_name == "params":
        return json.dumps(value, sort_keys=True)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _comparable(field_name: str, value: Any) -> Any:
    if field_name == "params":
        return json.loads(json.dumps(value))  # tuples and lists alike, as stored
    return value


@dataclass
class Plan:
    changes: list[Change]
    problems: list[str]
    declared: int

    def lines(self) -> list[str]:
        return [line for change in self.changes for line in change.lines()]

    def summary(self, *, applied: bool) -> str:
        if not self.changes:
            count = f"{self.declared} declared schedule{'' if self.declared == 1 else 's'}"
            return f"No changes: the database matches the code ({count})."
        counts: dict[str, int] = {}
        for change in self.changes:
            counts[change.kind] = counts.get(change.kind, 0) + 1
        words = {
            "create": "created" if applied else "to create",
            "update": "updated" if applied else "to update",
            "adopt": "adopted" if applied else "to adopt",
            "release": "stopped (no longer declared)"
            if applied
            else "to stop (no longer declared)",
        }
        parts = ", ".join(f"{counts[k]} {words[k]}" for k in words if k in counts)
        total = len(self.changes)
        schedules = f"{total} schedule{'' if total == 1 else 's'}"
        if applied:
            return f"Synced {schedules}: {parts}."
        return f"{schedules} differ{'s' if total == 1 else ''} from the code: {parts}."


def _form_data(declaration: Declaration) -> tuple[dict[str, Any], list[str]]:
    """The admin form's data for a declaration: each field it leaves out at the model's default."""
    data: dict[str, Any] = {}
    for name in DEFINITION_FIELDS:
        default = CleanupSchedule._meta.get_field(name).get_default()
        data[name] = "" if default is None or name in REQUIRED else default
    data.update(declaration.fields)
    data["name"] = declaration.name
    problems = []
    try:
        # As the admin's form posts it: JSON text.
        data["params"] = json.dumps(data["params"])
    except (TypeError, ValueError) as error:
        problems.append(f"{declaration.where}: params: must be JSON data ({error}).")
    for name, value in list(data.items()):
        if value is None:
            data[name] = ""
    return data, problems


def make_plan(declarations: list[Declaration], problems: list[str], *, adopt: bool = False) -> Plan:
    """Compare the declarations with the database; nothing is written. The forms of creates
    and updates are kept on their changes, validated, for apply()."""
    problems = list(problems)
    rows = {s.name: s for s in CleanupSchedule.objects.all()}
    changes = []
    for declaration in declarations:
        problems.extend(declaration.problems)
        row = rows.get(declaration.name)
        if row is not None and not row.managed_by and not adopt:
            problems.append(
                f"{declaration.where}: a schedule named {declaration.name!r} already exists "
                "and is managed in the admin; rename the declaration, or run syncschedules "
                "--adopt to manage it in code (its definition is replaced by the declaration)."
            )
            continue
        data, bad = _form_data(declaration)
        if bad:
            problems.extend(bad)
            continue
        # A fresh instance for the form: it writes the cleaned values onto it.
        instance = (
            CleanupSchedule(name=declaration.name)
            if row is None
            else CleanupSchedule.objects.get(pk=row.pk)
        )
        instance.managed_by = declaration.source  # validated as the code, before any save
        instance.changed_by = None
        form = DeclarationForm(data=data, instance=instance)
        if not form.is_valid():
            for field_name, messages in form.errors.items():
                label = "" if field_name == "__all__" else f"{field_name}: "
                problems.extend(f"{declaration.where}: {label}{m}" for m in messages)
            continue
        change = _change_for(declaration, row, form)
        if change is not None:
            changes.append(change)
    declared_names = {d.name for d in declarations}
    for name, row in sorted(rows.items()):
        if row.managed_by and name not in declared_names:
            changes.append(
                Change(
                    name,
                    "release",
                    row.managed_by,
                    transition=(row.desired_state, STOPPED.value) if row.is_alive else None,
                    declared_state="",
                    runs=row.runs.count(),
                )
            )
    return Plan(changes if not problems else [], problems, len(declarations))


def _change_for(declaration: Declaration, row: CleanupSchedule | None, form: Any) -> Change | None:
    cleaned = form.instance
    wanted = declaration.state
    if row is None:
        shown = {k: getattr(cleaned, k) for k in DEFINITION_FIELDS if k in declaration.fields}
        transition = (STOPPED.value, wanted) if wanted != STOPPED else None
        return Change(
            declaration.name,
            "create",
            declaration.source,
            declared=shown,
            transition=transition,
            declared_state=wanted,
            form=form,
        )
    fields = []
    for name in DEFINITION_FIELDS:
        old, new = getattr(row, name), getattr(cleaned, name)
        if _comparable(name, old) != _comparable(name, new):
            fields.append((name, old, new))
    # The declared state applies when it changed since the last sync (or code takes over):
    # until then, whatever an operator did stands.
    last = row.declared_state if row.managed_by else ""
    transition = None
    declared_state = None
    if wanted != last:
        declared_state = wanted
        if wanted != row.desired_state:
            transition = (row.desired_state, wanted)
    moved = row.managed_by != declaration.source
    if not fields and not moved and declared_state is None:
        return None
    return Change(
        declaration.name,
        "adopt" if not row.managed_by else "update",
        declaration.source,
        fields=fields,
        previous_source=row.managed_by,
        transition=transition,
        declared_state=declared_state,
        form=form,
    )


# --- applying it ----------------------------------------------------------------------------


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
