"""The batch deleter: every row a task deletes goes through ``delete_in_batches``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.db import connections, models, transaction
from django.db.models.deletion import (
    CASCADE,
    DO_NOTHING,
    Collector,
    get_candidate_relations_to_delete,
)

from cleanups.tasks.context import CleanupContext

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
