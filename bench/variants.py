"""Candidate replacements for cleanups.registry.delete_in_batches, measured by delete_rows.py.

Nothing here is used by the project: ``delete_rows.py --variants`` swaps each one in for the
delete_old_rows task, in the benchmark's process only. Each keeps delete_in_batches' signature and
contract: short transactions, the counts recorded (ctx.deleted) inside each batch's transaction,
cascades and signals honoured, ctx.out_of_time() checked between batches, a given batch_size
fixing the rows per batch and none letting the size adapt (with the registry's own rule).
"""

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

from cleanups import registry
from cleanups.registry import CleanupContext


def sql_cascade_plan(queryset: models.QuerySet[Any]) -> list[models.ForeignKey] | None:
    """The foreign keys whose rows a batch deletes first, or None when the collector is needed.

    A plan exists only where Django's collector would itself do nothing but SQL: something
    cascades to the model, but it has no pre/post_delete listeners, no multi-table parents, no
    generic relations, no composite pk, and every foreign key to it is DO_NOTHING or a CASCADE
    (to its primary key) from a model that can be fast-deleted in turn (no listeners, nothing
    depending on it). Anything else (nothing cascading: the existing fast path; SET_NULL,
    PROTECT, signals, deeper cascades, a to_field) gets None: delete_in_batches as it is.
    """
    model = queryset.model
    opts = model._meta
    collector = Collector(using=queryset.db, origin=queryset)
    if (
        collector.can_fast_delete(queryset)
        or collector._has_signal_listeners(model)
        or opts.proxy
        or opts.concrete_model._meta.parents
        or opts.is_composite_pk
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


def delete_in_batches_sql_cascade(
    ctx: CleanupContext, queryset: models.QuerySet[Any], batch_size: int | None = None
) -> None:
    """Where the collector would only run SQL, run that SQL on each batch directly.

    Per batch (one transaction): SELECT the batch's primary keys (ids only, no model
    instances), then ``DELETE FROM <dependent> WHERE <fk> IN (ids)`` for each CASCADE foreign
    key and ``DELETE FROM <table> WHERE <pk> IN (ids)``, the ids passed as plain parameters in
    chunks the backend accepts (999 on SQLite). The collector spends its time building a model
    instance per row and preparing every IN value through the ORM; this does neither. Where no
    plan exists (see sql_cascade_plan) it is cleanups.registry.delete_in_batches unchanged.
    """
    plan = None if ctx.dry_run else sql_cascade_plan(queryset)
    if plan is None:
        registry.delete_in_batches(ctx, queryset, batch_size)
        return
    model = queryset.model
    db = queryset.db
    connection = connections[db]
    quote = connection.ops.quote_name
    # Every table to delete from, dependents first: (target, table, column matched to the ids).
    steps = [
        (field.model._meta.label, quote(field.model._meta.db_table), quote(field.column))
        for field in plan
    ]
    steps.append((model._meta.label, quote(model._meta.db_table), quote(model._meta.pk.column)))
    ids = queryset.order_by().values_list("pk", flat=True)
    chunk = connection.features.max_query_params or registry.AUTO_BATCH_MAX
    size = batch_size or registry.AUTO_BATCH_FIRST
    while not ctx.out_of_time():
        started = time.monotonic()
        with transaction.atomic(using=db):
            batch = list(ids[:size])
            if not batch:
                break
            counts = dict.fromkeys((step[0] for step in steps), 0)
            with connection.cursor() as cursor:
                for start in range(0, len(batch), chunk):
                    keys = batch[start : start + chunk]
                    marks = ", ".join(["%s"] * len(keys))
                    for target, table, column in steps:
                        cursor.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", keys)
                        counts[target] += cursor.rowcount
            for target, count in counts.items():
                if count:
                    ctx.deleted(target, count)
        if len(batch) < size:
            break
        if batch_size is None:  # the registry's adaptive rule, unchanged
            took = max(time.monotonic() - started, 1e-6)
            scale = min(max(registry.AUTO_BATCH_SECONDS / took, 0.5), 2.0)
            size = int(min(max(size * scale, registry.AUTO_BATCH_MIN), registry.AUTO_BATCH_MAX))


VARIANTS: dict[str, Callable[[CleanupContext, models.QuerySet[Any], int | None], None]] = {
    "variant: SQL cascade": delete_in_batches_sql_cascade,
}
