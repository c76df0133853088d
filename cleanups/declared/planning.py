"""The difference between the declarations and the database: a plan, nothing written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cleanups.declared.reading import (
    DEFINITION_FIELDS,
    PAUSED,
    REQUIRED,
    RUNNING,
    STOPPED,
    Declaration,
    DeclarationForm,
)
from cleanups.models import CleanupSchedule


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
