"""Who may delete what: the models a deployment allows, and the delete permission of the person
who last changed a schedule. Checked when a schedule is saved and again at every run, because
rights change.

A model a task names in its code (``@cleanup_task(..., deletes=["sessions.Session"])``) was chosen
by whoever wrote and deployed that code, so ``CLEANUP_ALLOWED_MODELS`` does not restrict it; a
model an editor names in a schedule's params must be allowed. Either way the editor needs the
model's delete permission: a schedule never deletes more than the person behind it may.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models.deletion import CASCADE, get_candidate_relations_to_delete

from cleanups.conf import settings

# Their rows are the site's users, audit trail, sessions and our own records: never a target
# unless a deployer lists them in CLEANUP_ALLOWED_MODELS.
# Who may see the pages, and /metrics and the reasons of /healthz: staff with these.
VIEW_SCHEDULES = "cleanups.view_cleanupschedule"
VIEW_RUNS = "cleanups.view_cleanuprun"

PROTECTED_APPS = frozenset({"auth", "admin", "contenttypes", "sessions", "cleanups"})


def model_allowed(model: type[models.Model]) -> bool:
    """Whether the deployment lets an editor point a schedule at ``model``."""
    listed = {label.strip().lower() for label in settings.CLEANUP_ALLOWED_MODELS if label.strip()}
    if listed:
        return model._meta.label_lower in listed
    return model._meta.app_label not in PROTECTED_APPS


def delete_permission(model: type[models.Model]) -> str:
    """The permission name, as ``has_perm`` takes it: ``app_label.delete_model``."""
    opts = model._meta
    return f"{opts.app_label}.{get_permission_codename('delete', opts)}"


def cascaded_models(model: type[models.Model]) -> list[type[models.Model]]:
    """The models whose rows deleting ``model``'s rows deletes too (CASCADE, transitively)."""
    found: dict[str, type[models.Model]] = {}
    pending = [model]
    while pending:
        for related in get_candidate_relations_to_delete(pending.pop()._meta):
            dependent = related.related_model
            if related.field.remote_field.on_delete is not CASCADE:
                continue
            if dependent._meta.auto_created or dependent._meta.label in found:
                continue  # an m2m through table goes with its rows; it has no permissions
            if dependent is not model:
                found[dependent._meta.label] = dependent
                pending.append(dependent)
    return list(found.values())


def refusal(user: Any, model: type[models.Model], *, named_by_code: bool = False) -> str | None:
    """Why ``user`` may not have a schedule delete rows of ``model``; None when they may.

    As in the admin's own delete, rows that go with them by CASCADE need their permission too.
    """
    label = model._meta.label
    if not named_by_code and not model_allowed(model):
        return f"{label} is not allowed here (CLEANUP_ALLOWED_MODELS does not list it)"
    if user is None or not getattr(user, "pk", None):
        return "no person is recorded as its editor"
    if not user.is_active:
        return f"{user.get_username()} is inactive"
    for target in [model, *cascaded_models(model)]:
        permission = delete_permission(target)
        if not user.has_perm(permission):
            cascade = "" if target is model else f" ({target._meta.label} rows go with {label})"
            return f"{user.get_username()} lacks the permission {permission}{cascade}"
    return None


class DeleteRefused(PermissionDenied):
    """A run was about to delete what the schedule's editor may not delete: nothing is deleted."""


class Entitlement:
    """What one run may delete: on behalf of the schedule's ``changed_by``, the models its task
    names in code, and any other model the deployment allows and that person may delete."""

    def __init__(self, editor: Callable[[], Any], named_by_code: Iterable[str] = ()) -> None:
        self._editor = editor  # read at the first check: a run that deletes nothing reads no user
        self.named_by_code = {label.lower() for label in named_by_code}
        self._granted: set[str] = set()

    def check(self, model: type[models.Model]) -> None:
        """Raise DeleteRefused unless this run may delete rows of ``model``."""
        label = model._meta.label_lower
        if label in self._granted:
            return
        why = refusal(self._editor(), model, named_by_code=label in self.named_by_code)
        if why is not None:
            raise DeleteRefused(f"changed_by no longer may delete {model._meta.label}: {why}.")
        self._granted.add(label)


class DeployedCode:
    """The editor of a schedule declared in code (``CLEANUP_SCHEDULES``, a ``cleanup_schedules``
    module): the code was reviewed and deployed, so it has every permission a superuser has. The
    deployment's own limits (allowed models and directories, protected fields) still apply: they
    are checked before anyone's permissions."""

    is_active = True
    is_staff = False
    is_superuser = True

    def __init__(self, source: str) -> None:
        self.source = source
        self.pk = f"code:{source}"  # no user's: truthy, so the checks see an editor

    def has_perm(self, perm: str, obj: object = None) -> bool:
        return True

    def get_username(self) -> str:
        return f"code ({self.source})"

    def __str__(self) -> str:
        return self.get_username()
