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

from cleanups.declared.applying import Result, plan, sync
from cleanups.declared.planning import Change, Plan, make_plan
from cleanups.declared.reading import (
    DECLARATION_KEYS,
    DEFINITION_FIELDS,
    MODULE_ATTRIBUTE,
    MODULE_NAME,
    SETTING,
    SETTING_SOURCE,
    STATES,
    Declaration,
    DeclarationError,
    DeclarationForm,
    collect,
    declaration_modules,
)

__all__ = [
    "DECLARATION_KEYS",
    "DEFINITION_FIELDS",
    "MODULE_ATTRIBUTE",
    "MODULE_NAME",
    "SETTING",
    "SETTING_SOURCE",
    "STATES",
    "Change",
    "Declaration",
    "DeclarationError",
    "DeclarationForm",
    "Plan",
    "Result",
    "collect",
    "declaration_modules",
    "make_plan",
    "plan",
    "sync",
]
