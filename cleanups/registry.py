"""The registry of cleanup tasks, the context a task runs with, and the batch deleter.

Register a task from a ``cleanup_tasks`` module in any installed app (they are discovered at
start-up, the way ``admin.py`` modules are)::

    @cleanup_task("old_exports", "Delete export files older than a week.", validate=my_validator)
    def old_exports(ctx: CleanupContext) -> str:
        ...
        ctx.deleted("exports", 3, bytes=12_000)
        return "Deleted 3 exports."
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import connections, models, transaction
from django.db.models.deletion import (
    CASCADE,
    DO_NOTHING,
    Collector,
    get_candidate_relations_to_delete,
)

from cleanups.access import Entitlement, refusal

if TYPE_CHECKING:
    from cleanups.models import CleanupRun

Params = dict[str, Any]
TaskFunction = Callable[["CleanupContext"], "str | None"]
Validator = Callable[[Params], Params]


class CleanupContext:
    """What a running task knows and reports: its params, dry run, counts, time left."""

    def __init__(
        self,
        params: Params,
        *,
        dry_run: bool = False,
        run: CleanupRun | None = None,
        deadline: float | None = None,
        entitlement: Entitlement | None = None,
    ) -> None:
        self.params = params
        self.dry_run = dry_run
        self.run = run
        self.deadline = deadline
        # A run acts for its schedule's editor; a context built by code (a shell, a test) has
        # no entitlement and its caller answers for what it deletes.
        self.entitlement = entitlement
        self.unfinished = False
        details = (run.details if run is not None else None) or {}
        self.targets: dict[str, dict[str, int]] = {
            name: dict(counts) for name, counts in details.get("targets", {}).items()
        }

    @property
    def items(self) -> int:
        return sum(counts.get("items", 0) for counts in self.targets.values())

    def deleted(self, target: str, count: int, bytes: int = 0) -> None:
        """Record that ``count`` items of ``target`` went (in a dry run: would go).

        Call it inside the batch's transaction, so the record and the data never disagree.
        """
        counts = self.targets.setdefault(target, {"items": 0, "bytes": 0})
        counts["items"] += count
        counts["bytes"] = counts.get("bytes", 0) + bytes
        self._save()

    would_delete = deleted  # reads better in a dry run's code path

    def out_of_time(self) -> bool:
        """True once this part of the run has used its time; stop and the loop resumes it."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.unfinished = True
        return self.unfinished

    def _save(self) -> None:
        if self.run is None:
            return
        from cleanups.models import CleanupRun

        self.run.items_deleted = self.items
        self.run.details = {**(self.run.details or {}), "targets": self.targets}
        CleanupRun.objects.filter(pk=self.run.pk).update(
            items_deleted=self.run.items_deleted, details=self.run.details
        )


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


# With no batch size given, batches grow or shrink to take about this long: long enough that
# per-batch costs vanish, far below what would keep another writer waiting noticeably.
AUTO_BATCH_SECONDS = 0.05
AUTO_BATCH_FIRST, AUTO_BATCH_MIN, AUTO_BATCH_MAX = 1000, 100, 100_000


def delete_in_batches(
    ctx: CleanupContext, queryset: models.QuerySet[Any], batch_size: int | None = None
) -> None:
    """Delete what ``queryset`` matches, one batch per short transaction.

    Each batch goes the cheapest way that is still correct:
    - nothing depends on the rows: ``DELETE ... WHERE pk IN (SELECT pk ... LIMIT n)``, the
      database's own fast path (through QuerySet.delete());
    - rows cascade to tables that need nothing else (no signals, no further relations): the
      SQL Django's collector would run, without building a model instance per row;
    - anything else (signals, SET_NULL, PROTECT, deeper cascades): Django's collector itself.
    The run record's counts are written in the same transaction as the batch, so a worker
    killed midway leaves both consistent.

    ``batch_size`` fixes the rows per batch; without it the size adapts so that each batch
    takes about AUTO_BATCH_SECONDS.

    In a run, the model is checked against what the schedule's editor may delete first.
    """
    if ctx.entitlement is not None:
        ctx.entitlement.check(queryset.model)
    if ctx.dry_run:
        ctx.would_delete(queryset.model._meta.label, queryset.count())
        return
    plan = sql_cascade_plan(queryset)
    delete_batch = _sql_cascade_batches(queryset, plan) if plan else _collector_batches(queryset)
    size = batch_size or AUTO_BATCH_FIRST
    while not ctx.out_of_time():
        started = time.monotonic()
        with transaction.atomic(using=queryset.db):
            taken, counts = delete_batch(size)
            for target, count in counts.items():
                if count:
                    ctx.deleted(target, count)
        if taken < size:
            break
        if batch_size is None:
            took = max(time.monotonic() - started, 1e-6)
            scale = min(max(AUTO_BATCH_SECONDS / took, 0.5), 2.0)
            size = int(min(max(size * scale, AUTO_BATCH_MIN), AUTO_BATCH_MAX))


BatchDeleter = Callable[[int], "tuple[int, dict[str, int]]"]


def _collector_batches(queryset: models.QuerySet[Any]) -> BatchDeleter:
    model, db = queryset.model, queryset.db
    pks = queryset.order_by().values("pk")

    def delete_batch(size: int) -> tuple[int, dict[str, int]]:
        batch = model._base_manager.using(db).filter(pk__in=pks[:size])
        _, per_model = batch.delete()
        return per_model.get(model._meta.label, 0), per_model

    return delete_batch


def sql_cascade_plan(queryset: models.QuerySet[Any]) -> list[models.ForeignKey] | None:
    """The foreign keys whose rows a batch deletes first, or None when the collector is needed.

    A plan exists only where Django's collector would itself run nothing but SQL: something
    cascades to the model, but the model has no delete signal listeners, no multi-table parents,
    no generic relations, and every foreign key to it is DO_NOTHING or a CASCADE (to its primary
    key) from a model that can be fast-deleted in turn (no listeners, nothing depending on it).
    """
    model = queryset.model
    opts = model._meta
    collector = Collector(using=queryset.db, origin=queryset)
    if (
        collector.can_fast_delete(queryset)
        or collector._has_signal_listeners(model)
        or opts.proxy
        or opts.concrete_model._meta.parents
        or getattr(opts, "is_composite_pk", False)
        or any(hasattr(field, "bulk_related_objects") for field in opts.private_fields)
    ):
        return None
    plan = []
    for related in get_candidate_relations_to_delete(opts):
        field = related.field
        if field.remote_field.on_delete is DO_NOTHING:
            continue
        dependents = related.related_model._base_manager.using(queryset.db).all()
        if (
            field.remote_field.on_delete is not CASCADE
            or field.target_field != opts.pk
            or not collector.can_fast_delete(dependents, from_field=field)
        ):
            return None
        plan.append(field)
    return plan


def _sql_cascade_batches(
    queryset: models.QuerySet[Any], plan: list[models.ForeignKey]
) -> BatchDeleter:
    model, db = queryset.model, queryset.db
    connection = connections[db]
    quote = connection.ops.quote_name
    # Every table to delete from, dependents first: (target, table, column matched to the ids).
    steps = [
        (field.model._meta.label, quote(field.model._meta.db_table), quote(field.column))
        for field in plan
    ]
    steps.append((model._meta.label, quote(model._meta.db_table), quote(model._meta.pk.column)))
    ids = queryset.order_by().values_list("pk", flat=True)
    chunk = connection.features.max_query_params or AUTO_BATCH_MAX

    def delete_batch(size: int) -> tuple[int, dict[str, int]]:
        batch = list(ids[:size])
        counts = dict.fromkeys((step[0] for step in steps), 0)
        with connection.cursor() as cursor:
            for start in range(0, len(batch), chunk):
                keys = batch[start : start + chunk]
                marks = ", ".join(["%s"] * len(keys))
                for target, table, column in steps:
                    cursor.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", keys)
                    counts[target] += cursor.rowcount
        return len(batch), counts

    return delete_batch


# Parameter validation helpers, for the built-in tasks and for yours.


def reject_unknown(params: Params, allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValidationError(
            "Unknown parameter(s): %(unknown)s. Allowed: %(allowed)s.",
            params={"unknown": ", ".join(unknown), "allowed": ", ".join(sorted(allowed)) or "none"},
        )


def number_param(
    params: Params, key: str, default: float | None, minimum: float, maximum: float
) -> float | None:
    """A number within [minimum, maximum]; ``default`` (which may be None) when absent."""
    if key not in params or params[key] is None:
        return default
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("%(key)s must be a number.", params={"key": key})
    if not minimum <= value <= maximum:
        raise ValidationError(
            "%(key)s must be between %(min)s and %(max)s.",
            params={"key": key, "min": minimum, "max": maximum},
        )
    return value


def positive_days(params: Params, key: str, default: float | None) -> float | None:
    value = number_param(params, key, default, float("-inf"), 36_500)
    if value is not None and value <= 0:
        raise ValidationError("%(key)s must be more than 0.", params={"key": key})
    return value


def int_param(params: Params, key: str, default: int, minimum: int, maximum: int) -> int:
    value = number_param(params, key, default, minimum, maximum)
    assert value is not None
    if value != int(value):
        raise ValidationError("%(key)s must be a whole number.", params={"key": key})
    return int(value)


def bool_param(params: Params, key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise ValidationError("%(key)s must be true or false.", params={"key": key})
    return value
