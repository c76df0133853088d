"""The registry of cleanup tasks: each a function, its params' validation and what it deletes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import models

from cleanups.access import Entitlement, refusal
from cleanups.tasks.context import CleanupContext
from cleanups.tasks.params import Params

TaskFunction = Callable[[CleanupContext], "str | None"]
Validator = Callable[[Params], Params]


@dataclass(frozen=True)
class CleanupTask:
    """A registered cleanup: a function, the validation of its parameters, and the models it
    deletes: named in its code (``deletes``) or chosen by the editor in its params
    (``deletes_from_params``, given the cleaned params)."""

    name: str
    description: str
    function: TaskFunction
    validate: Validator
    deletes: tuple[str, ...] = ()
    deletes_from_params: Callable[[Params], Iterable[str]] | None = None

    def clean_params(self, params: Any) -> Params:
        """Return validated params, or raise ValidationError with a readable message."""
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ValidationError("Parameters must be a JSON object, for example {}.")
        return self.validate(dict(params))

    def target_models(self, params: Params) -> list[tuple[type[models.Model], bool]]:
        """The models these (cleaned) params delete, each with whether code named it."""
        named = [(apps.get_model(label), True) for label in self.deletes]
        chosen = self.deletes_from_params(params) if self.deletes_from_params else ()
        return named + [(apps.get_model(label), False) for label in chosen]

    def refusals(self, params: Params, user: Any) -> list[str]:
        """Why ``user`` may not save a schedule of this task with these params: [] if they may."""
        reasons = []
        for model, named_by_code in self.target_models(params):
            why = refusal(user, model, named_by_code=named_by_code)
            if why is not None:
                reasons.append(f"You may not delete {model._meta.label}: {why}.")
        return reasons

    def entitle(self, params: Params, editor: Callable[[], Any]) -> Entitlement:
        """What a run with these params may delete for the person ``editor()`` returns; raises
        DeleteRefused before anything runs if they may no longer delete one of its models."""
        entitlement = Entitlement(editor, self.deletes)
        for model, _ in self.target_models(params):
            entitlement.check(model)
        return entitlement


_registry: dict[str, CleanupTask] = {}


def _accept_any(params: Params) -> Params:
    return params


def cleanup_task(
    name: str,
    description: str,
    validate: Validator | None = None,
    *,
    deletes: Iterable[str] = (),
    deletes_from_params: Callable[[Params], Iterable[str]] | None = None,
) -> Callable[[TaskFunction], TaskFunction]:
    """Register a function taking a CleanupContext as the cleanup task ``name``.

    ``deletes``: the ``app_label.Model`` labels it deletes whatever its params; a schedule's
    editor needs their delete permission. ``deletes_from_params``: for a task whose params name
    the model, a function of the cleaned params giving the labels; those must also be allowed by
    CLEANUP_ALLOWED_MODELS. Any other model a run hands to ``delete_in_batches`` must be both.
    """

    def register(function: TaskFunction) -> TaskFunction:
        existing = _registry.get(name)
        if existing is not None and existing.function.__qualname__ != function.__qualname__:
            raise ValueError(f"A cleanup task named {name!r} is already registered.")
        _registry[name] = CleanupTask(
            name,
            description,
            function,
            validate or _accept_any,
            tuple(deletes),
            deletes_from_params,
        )
        return function

    return register


def get_task(name: str) -> CleanupTask | None:
    return _registry.get(name)


def all_tasks() -> list[CleanupTask]:
    return sorted(_registry.values(), key=lambda task: task.name)


def task_choices() -> list[tuple[str, str]]:
    """Choices for the schedule's ``task`` field; a callable so new tasks need no migration."""
    return [(task.name, task.name) for task in all_tasks()]
