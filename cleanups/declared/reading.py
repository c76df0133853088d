"""Reading the declarations: the setting and every installed app's ``cleanup_schedules`` module."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.apps import apps
from django.forms import modelform_factory
from django.utils.module_loading import module_has_submodule

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
